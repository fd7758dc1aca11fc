// Relay paging a @connection to its end, forward or backward, with Relay's own machinery and
// no merge function of ours: relay-compiler compiles a @refetchable fragment with a
// bidirectional @connection against the gateway's committed SDL, and relay-runtime runs it:
// the query, then what usePaginationFragment's loadNext/loadPrevious do (react-relay's
// useLoadMoreFunction, without React): the cursor and hasNext/hasPrevious read from the
// fragment's connection, getPaginationVariables, the refetchable pagination query fetched
// with fetchQuery, and the store's ConnectionHandler merging each page into the connection.
//
//   node relay-pagination.mjs --url URL --schema schema/numbers.graphql --page-size N
//        [--direction forward|backward] [--filter JSON] [--max-pages N]
//
// stdout: one JSON line {"edges": [{cursor, node}], "pageInfo", "totalCount", "pages",
//   "requests": [variables of each request]}: the fragment's data after the last page.
// Exit 0 when paging ended; 1 on an error (a compiler error included; on stderr); 2 for bad
// usage.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { cliArgs, emit, fail, jsonOption, loopbackOption, recordingFetch } from './lib.mjs';

const require = createRequire(import.meta.url);
const {
  Environment, Network, RecordSource, Store, Observable, __internal: { fetchQuery },
  createOperationDescriptor, getSelector, getPaginationMetadata, getPaginationVariables,
  getValueAtPath,
} = require('relay-runtime');

const { values } = cliArgs({
  url: { type: 'string' },
  schema: { type: 'string' },
  'page-size': { type: 'string' },
  direction: { type: 'string', default: 'forward' },
  filter: { type: 'string' },
  'max-pages': { type: 'string', default: '200' },
});
const pageSize = Number(values['page-size']);
if (!values.url || !values.schema || !Number.isInteger(pageSize)
  || !['forward', 'backward'].includes(values.direction)) {
  fail('usage: relay-pagination.mjs --url URL --schema SDL --page-size N [--direction D]', 2);
}
const url = loopbackOption(values.url);
const direction = values.direction;
const filter = jsonOption(values.filter, 'filter', null);
const maxPages = Number(values['max-pages']);

// A frontend's documents: the fragment pages both ways; the query spreads it.
const SOURCE = `
import { graphql } from 'relay-runtime';
graphql\`
  fragment NumbersList_query on Query
  @argumentDefinitions(
    count: { type: "Int" }
    cursor: { type: "String" }
    last: { type: "Int" }
    before: { type: "String" }
    filter: { type: "PhoneNumberFilter" }
  )
  @refetchable(queryName: "NumbersListPaginationQuery") {
    phoneNumbers(first: $count, after: $cursor, last: $last, before: $before, filter: $filter)
      @connection(key: "NumbersList_phoneNumbers", filters: ["filter"]) {
      totalCount
      edges { cursor node { phoneNumber extension } }
    }
  }
\`;
graphql\`
  query NumbersListQuery($count: Int, $last: Int, $filter: PhoneNumberFilter) {
    ...NumbersList_query @arguments(count: $count, last: $last, filter: $filter)
  }
\`;
`;

function compile(workdir) {
  mkdirSync(join(workdir, 'src', '__generated__'), { recursive: true });
  writeFileSync(join(workdir, 'src', 'NumbersList.js'), SOURCE);
  // CommonJS artifacts: ES module ones import each other with no file extension, which
  // Node's ESM loader refuses (a bundler would resolve them).
  writeFileSync(join(workdir, 'package.json'), '{"type": "commonjs"}\n');
  writeFileSync(join(workdir, 'relay.config.json'), JSON.stringify({
    src: './src',
    schema: resolve(values.schema),
    language: 'javascript',
    eagerEsModules: false,
    artifactDirectory: './src/__generated__',
  }));
  const compiler = require('relay-compiler'); // the path of the platform's binary
  const ran = spawnSync(compiler, [], { cwd: workdir, encoding: 'utf8' });
  if (ran.status !== 0) {
    throw new Error(`relay-compiler failed:\n${ran.stdout}\n${ran.stderr}`);
  }
  const artifact = (name) => require(join(workdir, 'src', '__generated__', `${name}.graphql.js`));
  return { query: artifact('NumbersListQuery'), fragment: artifact('NumbersList_query') };
}

const requests = [];
const fetchFn = recordingFetch({ log: requests });
const network = Network.create((params, variables) => Observable.from(
  fetchFn(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ query: params.text, variables }),
  }).then((response) => response.json()),
));

async function fetched(environment, operation) {
  await new Promise((done, failed) => {
    fetchQuery(environment, operation).subscribe({ complete: done, error: failed });
  });
}

const workdir = mkdtempSync(join(tmpdir(), 'relay-pagination-'));
try {
  const { query, fragment } = compile(workdir);
  const environment = new Environment({ network, store: new Store(new RecordSource()) });
  const variables = direction === 'forward'
    ? { count: pageSize, filter } : { last: pageSize, filter };
  const root = createOperationDescriptor(query, variables);
  await fetched(environment, root);
  // The fragment's reference, as a component holding the query's data would pass it on.
  const fragmentRef = environment.lookup(root.fragment).data;
  const {
    connectionPathInFragmentData, paginationRequest, paginationMetadata,
  } = getPaginationMetadata(fragment, 'NumbersList');
  const selector = getSelector(fragment, fragmentRef);
  const read = () => getValueAtPath(environment.lookup(selector).data,
    connectionPathInFragmentData);
  let pages = 1;
  for (;;) {
    const { pageInfo } = read();
    const cursor = direction === 'forward' ? pageInfo.endCursor : pageInfo.startCursor;
    const hasMore = cursor != null
      && (direction === 'forward' ? pageInfo.hasNextPage : pageInfo.hasPreviousPage) === true;
    if (!hasMore) break;
    if (pages >= maxPages) throw new Error(`still paging after ${pages} pages`);
    const baseVariables = { ...selector.owner.variables, ...selector.variables };
    const paginationVariables = getPaginationVariables(
      direction, pageSize, cursor, baseVariables, {}, paginationMetadata,
    );
    await fetched(environment,
      createOperationDescriptor(paginationRequest, paginationVariables, { force: true }));
    pages += 1;
  }
  const connection = read();
  emit({
    edges: connection.edges.map(({ cursor, node }) => ({
      cursor, node: { phoneNumber: node.phoneNumber, extension: node.extension },
    })),
    pageInfo: connection.pageInfo,
    totalCount: connection.totalCount,
    pages,
    requests: requests.map((request) => request.body?.variables ?? null),
  });
} catch (err) {
  fail(`relay-pagination: ${err?.stack ?? err}`);
} finally {
  rmSync(workdir, { recursive: true, force: true });
}
