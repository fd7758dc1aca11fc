// Apollo Client 3 (core, no React) paging a connection to its end with the cache's own
// relayStylePagination() field policy: no merge function of ours, the frontend's few lines.
//
//   node apollo-pagination.mjs --url URL --page-size N [--direction forward|backward]
//        [--filter JSON] [--max-pages N]
//
// forward:  watchQuery({first: N}), then fetchMore({variables: {after: pageInfo.endCursor}})
//           while pageInfo.hasNextPage;
// backward: watchQuery({last: N}), then fetchMore({variables: {before: pageInfo.startCursor}})
//           while pageInfo.hasPreviousPage.
// stdout: one JSON line {"edges": [{cursor, node}], "pageInfo", "totalCount", "pages",
//   "requests": [variables of each request]}: edges and pageInfo as the cache reads them
//   after the last page (the merged connection).
// Exit 0 when paging ended; 1 on an error (message on stderr); 2 for bad usage.
import { ApolloClient, HttpLink, InMemoryCache, gql } from '@apollo/client/core/index.js';
import { loadDevMessages, loadErrorMessages } from '@apollo/client/dev/index.js';
import { relayStylePagination } from '@apollo/client/utilities/index.js';
import { cliArgs, emit, fail, jsonOption, loopbackOption, recordingFetch } from './lib.mjs';

const { values } = cliArgs({
  url: { type: 'string' },
  'page-size': { type: 'string' },
  direction: { type: 'string', default: 'forward' },
  filter: { type: 'string' },
  'max-pages': { type: 'string', default: '200' },
});
const pageSize = Number(values['page-size']);
if (!values.url || !Number.isInteger(pageSize)
  || !['forward', 'backward'].includes(values.direction)) {
  fail('usage: apollo-pagination.mjs --url URL --page-size N [--direction forward|backward]', 2);
}
const forward = values.direction === 'forward';
// Apollo's warnings (a cache merge it cannot do, say) in words on stderr, not as codes.
loadDevMessages();
loadErrorMessages();
const filter = jsonOption(values.filter, 'filter', null);
const maxPages = Number(values['max-pages']);

const QUERY = gql`
  query Numbers($filter: PhoneNumberFilter, $first: Int, $after: String, $last: Int,
                $before: String) {
    phoneNumbers(filter: $filter, first: $first, after: $after, last: $last, before: $before) {
      totalCount
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
      edges { cursor node { phoneNumber extension } }
    }
  }
`;

const requests = [];
const client = new ApolloClient({
  link: new HttpLink({ uri: loopbackOption(values.url), fetch: recordingFetch({ log: requests }) }),
  cache: new InMemoryCache({
    // What a frontend writes: the list is one per filter, paged by Relay's arguments.
    typePolicies: { Query: { fields: { phoneNumbers: relayStylePagination(['filter']) } } },
  }),
});

try {
  const observable = client.watchQuery({
    query: QUERY,
    variables: forward ? { filter, first: pageSize } : { filter, last: pageSize },
  });
  let subscription;
  await new Promise((loaded, failed) => {
    subscription = observable.subscribe({
      next: (result) => { if (!result.loading) loaded(result); },
      error: failed,
    });
  });
  let pages = 1;
  for (;;) {
    const { data, error } = observable.getCurrentResult();
    if (error) throw error;
    const { pageInfo } = data.phoneNumbers;
    const more = forward ? pageInfo.hasNextPage : pageInfo.hasPreviousPage;
    if (!more) break;
    if (pages >= maxPages) throw new Error(`still paging after ${pages} pages`);
    await observable.fetchMore({
      variables: forward ? { after: pageInfo.endCursor } : { before: pageInfo.startCursor },
    });
    pages += 1;
  }
  const { phoneNumbers } = observable.getCurrentResult().data;
  subscription.unsubscribe();
  emit({
    edges: phoneNumbers.edges.map(({ cursor, node }) => ({
      cursor, node: { phoneNumber: node.phoneNumber, extension: node.extension },
    })),
    pageInfo: phoneNumbers.pageInfo,
    totalCount: phoneNumbers.totalCount,
    pages,
    requests: requests.map((request) => request.body?.variables ?? null),
  });
} catch (err) {
  fail(`apollo-pagination: ${err?.stack ?? err}`);
}
