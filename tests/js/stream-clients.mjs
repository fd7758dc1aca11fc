// Frontend clients receiving the gateway's incremental payloads and subscription events.
//
//   node stream-clients.mjs --client NAME --url URL (--query-file F | --query TEXT)
//        [--variables JSON] [--token TOKEN] [--stop-at PHONE_NUMBER] [--retry-attempts N]
//
// Queries (@defer/@stream over multipart/mixed), the run ends with the operation:
//   apollo-defer   Apollo Client 3 (HttpLink, its @defer support), watchQuery until the
//                  deferred data is in (Apollo Client 3 merges only `data`: no @stream items)
//   urql           urql (fetchExchange) reading multipart @defer and @stream payloads of
//                  a `phoneNumbers` connection
//   stdout: one JSON line; apollo-defer: {"results": [{"data", "errors"}]}, every result the
//           client handed out, in order (the last one is the whole answer); urql:
//           {"results": [{"nodes" (how many so far), "totalCount", "errors", "hasNext"}],
//            "data"} (the whole answer, as the last result had it)
//
// Subscriptions, each event printed as it arrives, the run ends after the event whose
// number.phoneNumber is --stop-at:
//   graphql-ws     the graphql-ws client over ws (Authorization in connectionParams)
//   graphql-sse    the graphql-sse client, distinct connections mode
//   apollo-ws      Apollo Client's GraphQLWsLink (graphql-ws underneath)
//   stdout: one JSON line {"event": <data>} per event, then {"done": true}
// --retry-attempts: how often a subscription client reconnects after losing its server (the
// libraries' own retries, with their own backoff; default 0, none): a rolling deploy's test.
// The token goes as `Authorization: Bearer <token>` (default demo-admin). Exit 0 when the
// run ended as described; 1 with the reason on stderr otherwise; 2 for bad usage.
import { readFileSync } from 'node:fs';
// Apollo Client 3 has no package "exports" map: ESM needs the explicit index.js paths.
import {
  ApolloClient, HttpLink, InMemoryCache, gql,
} from '@apollo/client/core/index.js';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions/index.js';
import { Client as UrqlClient, fetchExchange } from '@urql/core';
import { createClient as createSseClient } from 'graphql-sse';
import { createClient as createWsClient } from 'graphql-ws';
import WebSocket from 'ws';
import {
  cliArgs, emit, fail, jsonOption, loopbackOption, recordingFetch,
} from './lib.mjs';

const CLIENTS = ['apollo-defer', 'urql', 'graphql-ws', 'graphql-sse', 'apollo-ws'];
const { values } = cliArgs({
  client: { type: 'string' },
  url: { type: 'string' },
  query: { type: 'string' },
  'query-file': { type: 'string' },
  variables: { type: 'string' },
  token: { type: 'string', default: 'demo-admin' },
  'stop-at': { type: 'string' },
  'retry-attempts': { type: 'string', default: '0' },
});
const query = values.query ?? (values['query-file'] && readFileSync(values['query-file'], 'utf8'));
if (!values.url || !query || !CLIENTS.includes(values.client)) {
  fail(`usage: stream-clients.mjs --client ${CLIENTS.join('|')} --url URL --query Q`, 2);
}
const url = loopbackOption(values.url);
const wsUrl = url.replace(/^http/, 'ws');
const variables = jsonOption(values.variables, 'variables', {});
const authorization = `Bearer ${values.token}`;
const stopAt = values['stop-at'] ?? null;
const retryAttempts = Number(values['retry-attempts']);
if (!Number.isInteger(retryAttempts) || retryAttempts < 0) fail('--retry-attempts: a count', 2);

const formatErrors = (errors) => (errors ?? []).map((e) => ({
  message: e.message, code: e.extensions?.code ?? null,
}));

// Every result Apollo Client hands out, until the one with the deferred data (`complete`).
function apolloDefer(complete) {
  const client = new ApolloClient({
    link: new HttpLink({ uri: url, fetch: recordingFetch(), headers: { authorization } }),
    cache: new InMemoryCache({ addTypename: false }), // results compare with plain JSON
  });
  const results = [];
  return new Promise((resolve, reject) => {
    const watched = client.watchQuery({
      query: gql(query), variables, fetchPolicy: 'no-cache', errorPolicy: 'all',
    });
    const subscription = watched.subscribe({
      next: (result) => {
        results.push({ data: result.data ?? null, errors: formatErrors(result.errors) });
        if (complete(result.data)) {
          subscription.unsubscribe();
          client.stop();
          resolve({ results });
        }
      },
      error: reject,
    });
  });
}

function urql() {
  const client = new UrqlClient({
    url,
    exchanges: [fetchExchange],
    fetch: recordingFetch(),
    fetchOptions: { headers: { authorization } },
    requestPolicy: 'network-only',
    preferGetMethod: false, // a POST: a GET without a preflight header is refused (CSRF)
  });
  const results = [];
  return new Promise((resolve, reject) => {
    const { unsubscribe } = client.query(query, variables).subscribe((result) => {
      if (result.error?.networkError) {
        reject(result.error.networkError);
        return;
      }
      // Each result holds the whole answer so far: only its shape is kept, and the last.
      const connection = result.data?.phoneNumbers;
      results.push({
        nodes: connection?.nodes?.length ?? null,
        totalCount: connection?.totalCount ?? null,
        errors: formatErrors(result.error?.graphQLErrors),
        hasNext: Boolean(result.hasNext),
      });
      if (!result.hasNext) {
        Promise.resolve().then(() => unsubscribe());
        resolve({ results, data: result.data ?? null });
      }
    });
  });
}

// Prints each event; resolves after the one naming --stop-at.
function printer(resolve) {
  return (data) => {
    emit({ event: data });
    if (stopAt !== null && data?.phoneNumberChanges?.number?.phoneNumber === stopAt) {
      resolve();
      return true;
    }
    return false;
  };
}

function graphqlWs() {
  const client = createWsClient({
    url: wsUrl,
    webSocketImpl: WebSocket,
    connectionParams: { Authorization: authorization },
    retryAttempts,
  });
  return new Promise((resolve, reject) => {
    const onEvent = printer(resolve);
    const stop = client.subscribe({ query, variables }, {
      next: (result) => {
        if (result.errors) reject(new Error(JSON.stringify(result.errors)));
        else if (onEvent(result.data)) stop();
      },
      error: (err) => reject(err instanceof Error ? err : new Error(JSON.stringify(err))),
      complete: () => reject(new Error('the subscription completed early')),
    });
  }).finally(() => client.dispose());
}

function graphqlSse() {
  const client = createSseClient({
    url,
    singleConnection: false, // distinct connections mode
    headers: { Authorization: authorization },
    fetchFn: recordingFetch(),
    retryAttempts,
  });
  return new Promise((resolve, reject) => {
    const onEvent = printer(resolve);
    const stop = client.subscribe({ query, variables }, {
      next: (result) => {
        if (result.errors) reject(new Error(JSON.stringify(result.errors)));
        else if (onEvent(result.data)) stop();
      },
      error: (err) => reject(err instanceof Error ? err : new Error(JSON.stringify(err))),
      complete: () => reject(new Error('the subscription completed early')),
    });
  }).finally(() => client.dispose());
}

function apolloWs() {
  const ws = createWsClient({
    url: wsUrl,
    webSocketImpl: WebSocket,
    connectionParams: { Authorization: authorization },
    retryAttempts,
  });
  const client = new ApolloClient({
    link: new GraphQLWsLink(ws), cache: new InMemoryCache({ addTypename: false }),
  });
  return new Promise((resolve, reject) => {
    const onEvent = printer(resolve);
    const subscription = client.subscribe({
      query: gql(query), variables, fetchPolicy: 'no-cache',
    }).subscribe({
      next: (result) => {
        if (result.errors?.length) reject(new Error(JSON.stringify(result.errors)));
        else if (onEvent(result.data)) subscription.unsubscribe();
      },
      error: reject,
      complete: () => reject(new Error('the subscription completed early')),
    });
  }).finally(() => { client.stop(); return ws.dispose(); });
}

// The deferred fragment's data: `totalCount` of the first connection in the answer.
const hasDeferredCount = (data) => Object.values(data ?? {})
  .some((connection) => typeof connection?.totalCount === 'number');

try {
  switch (values.client) {
    case 'apollo-defer': emit(await apolloDefer(hasDeferredCount)); break;
    case 'urql': emit(await urql()); break;
    case 'graphql-ws': await graphqlWs(); emit({ done: true }); break;
    case 'graphql-sse': await graphqlSse(); emit({ done: true }); break;
    default: await apolloWs(); emit({ done: true }); break;
  }
  process.exitCode = 0; // not exit(): stdout (a pipe) is written out first
} catch (err) {
  fail(`${values.client}: ${err?.stack ?? err}`);
}
