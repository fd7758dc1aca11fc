// A frontend's urql client (@urql/core) with automatic persisted queries (persistedExchange).
//
//   node urql-client.mjs --url URL (--query-file F | --query TEXT) [--variables JSON]
//        [--headers JSON] [--mode post|get] [--apq on|off] [--repeat N]
//
// Runs the operation N times (default 2) in order, always from the network.
// --mode get: persisted requests go as GET, and (unlike Apollo Client) so does the retry that
//   carries the document. urql sends no content-type on GET: servers with Apollo-style CSRF
//   prevention need --headers '{"apollo-require-preflight": "true"}' for it.
// The retry after PERSISTED_QUERY_NOT_FOUND has extensions.persistedQuery.miss = true.
//   With --apq off, --mode get sends every query as GET (preferGetMethod: 'force').
// stdout: one JSON line {"results": [...], "requests": [...]}, the same shape as
// apollo-client.mjs:
//   results[i]:  {"data", "errors": [{"message", "code", "extensions"}], "networkError"}
//                (networkError: null or {"message", "statusCode", "result"})
//   requests[j]: {"method", "url", "headers", "body" (parsed JSON or null), "status",
//                 "response" (the parsed JSON body the server answered)}
// Exit 0 whatever the server answered; 2 for bad usage.
import { readFileSync } from 'node:fs';
import { Client, fetchExchange, gql } from '@urql/core';
import { persistedExchange } from '@urql/exchange-persisted';
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
});
const query = values.query ?? (values['query-file'] && readFileSync(values['query-file'], 'utf8'));
if (!values.url || !query || !['post', 'get'].includes(values.mode)
  || !['on', 'off'].includes(values.apq)) {
  fail('usage: urql-client.mjs --url URL --query-file F [--mode post|get] [--apq on|off]', 2);
}
const variables = jsonOption(values.variables, 'variables', {});
const headers = jsonOption(values.headers, 'headers', {});
const repeat = Number(values.repeat);
const get = values.mode === 'get';

const requests = [];
const exchanges = values.apq === 'on'
  // The default hash is SHA-256 of the printed document, via globalThis.crypto.subtle.
  ? [persistedExchange({ preferGetForPersistedQueries: get ? 'force' : false }), fetchExchange]
  : [fetchExchange];
const client = new Client({
  url: loopbackOption(values.url),
  exchanges,
  fetch: recordingFetch({ log: requests }),
  fetchOptions: { headers },
  // urql 4+ defaults to GET for short queries ('within-url-limit'): be explicit.
  preferGetMethod: get && values.apq === 'off' ? 'force' : false,
  requestPolicy: 'network-only',
});

const formatError = (e) => ({
  message: e.message,
  code: e.extensions?.code ?? null,
  extensions: e.extensions ?? null,
});

const document = gql(query);
const results = [];
for (let i = 0; i < repeat; i += 1) {
  const result = await client.query(document, variables).toPromise();
  const net = result.error?.networkError ?? null;
  results.push({
    data: result.data ?? null,
    errors: (result.error?.graphQLErrors ?? []).map(formatError),
    networkError: net && {
      message: net.message,
      statusCode: result.error.response?.status ?? null,
      result: null,
    },
  });
}
emit({ results, requests });
