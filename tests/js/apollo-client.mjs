// A frontend's Apollo Client 3 (core, no React) with automatic persisted queries.
//
//   node apollo-client.mjs --url URL (--query-file F | --query TEXT) [--variables JSON]
//        [--headers JSON] [--mode post|get] [--apq on|off] [--repeat N] [--batch]
//
// Runs the operation N times (default 2) in order, never from Apollo's cache.
// --batch: through BatchHttpLink, the N runs at once, so the link sends them as one POST of a
//   JSON array (the gateway's GATEWAY_BATCH_MAX must allow N); results stay in run order.
// --mode get: hashed APQ requests go as GET (useGETForHashedQueries); the retry that carries
//   the document is a POST. With --apq off, --mode get sends every query as GET.
// stdout: one JSON line {"results": [...], "requests": [...]}
//   results[i]:  {"data", "errors": [{"message", "code", "extensions"}], "networkError"}
//                (networkError: null or {"message", "statusCode", "result"})
//   requests[j]: every HTTP request the link made, in order:
//                {"method", "url", "headers", "body" (parsed JSON or null), "status",
//                 "response" (the parsed JSON body the server answered)}
//   APQ on a cold server: [hash only -> PERSISTED_QUERY_NOT_FOUND, hash + query], then hash only.
// Exit 0 whatever the server answered; 2 for bad usage.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
// Apollo Client 3 has no package "exports" map: ESM needs the explicit index.js paths.
import { ApolloClient, HttpLink, InMemoryCache, gql } from '@apollo/client/core/index.js';
import { BatchHttpLink } from '@apollo/client/link/batch-http/index.js';
import { createPersistedQueryLink } from '@apollo/client/link/persisted-queries/index.js';
import {
  cliArgs, emit, fail, jsonOption, loopbackOption, recordingFetch,
} from './lib.mjs';

const { values } = cliArgs({
  url: { type: 'string' },
  query: { type: 'string' },
  'query-file': { type: 'string' },
  variables: { type: 'string' },
  headers: { type: 'string' },
  mode: { type: 'string', default: 'post' },
  apq: { type: 'string', default: 'on' },
  repeat: { type: 'string', default: '2' },
  batch: { type: 'boolean', default: false },
});
const query = values.query ?? (values['query-file'] && readFileSync(values['query-file'], 'utf8'));
if (!values.url || !query || !['post', 'get'].includes(values.mode)
  || !['on', 'off'].includes(values.apq) || (values.batch && values.mode !== 'post')) {
  fail('usage: apollo-client.mjs --url URL --query-file F [--mode post|get] [--apq on|off]', 2);
}
const url = loopbackOption(values.url);
const variables = jsonOption(values.variables, 'variables', {});
const headers = jsonOption(values.headers, 'headers', {});
const repeat = Number(values.repeat);

const requests = [];
const http = values.batch
  ? new BatchHttpLink({
    uri: url,
    fetch: recordingFetch({ log: requests }),
    headers,
    batchMax: repeat,
    batchInterval: 20, // ms: the runs start together, so one interval gathers them all
  })
  : new HttpLink({
    uri: url,
    fetch: recordingFetch({ log: requests }),
    headers,
    useGETForQueries: values.mode === 'get' && values.apq === 'off',
  });
const link = values.apq === 'on'
  ? createPersistedQueryLink({
    sha256: (text) => createHash('sha256').update(text).digest('hex'),
    useGETForHashedQueries: values.mode === 'get',
  }).concat(http)
  : http;
// --batch: Apollo Client would merge identical in-flight queries into one; the point is N.
const client = new ApolloClient({
  link, cache: new InMemoryCache(), queryDeduplication: !values.batch,
});

const formatError = (e) => ({
  message: e.message,
  code: e.extensions?.code ?? null,
  extensions: e.extensions ?? null,
});

// The `errors` of a non-2xx response's JSON body, if it has any.
const bodyErrors = (net) => (Array.isArray(net?.result?.errors) ? net.result.errors : []);

const document = gql(query);

async function run() {
  try {
    const result = await client.query({
      query: document,
      variables,
      fetchPolicy: 'no-cache',
      errorPolicy: 'all',
    });
    return {
      data: result.data ?? null,
      errors: (result.errors ?? []).map(formatError),
      networkError: null,
    };
  } catch (err) {
    // An ApolloError: GraphQL errors and/or a network error (non-2xx, unparsable body, ...).
    const net = err.networkError ?? null;
    return {
      data: null,
      errors: (err.graphQLErrors?.length ? err.graphQLErrors : bodyErrors(net)).map(formatError),
      networkError: net && {
        message: net.message,
        statusCode: net.statusCode ?? null,
        result: net.result ?? null,
      },
    };
  }
}

const results = [];
if (values.batch) {
  results.push(...await Promise.all(Array.from({ length: repeat }, run)));
} else {
  for (let i = 0; i < repeat; i += 1) results.push(await run());
}
client.stop();
emit({ results, requests });
