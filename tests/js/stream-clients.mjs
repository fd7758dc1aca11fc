// Frontend clients receiving the gateway's incremental payloads and subscription events.
//
//   node stream-clients.mjs --client NAME --url URL (--query-file F | --query TEXT)
//        [--variables JSON] [--token TOKEN] [--stop-at PHONE_NUMBER] [--until-nodes N]
//        [--accept TYPE] [--fetch-policy no-cache|cache-first] [--retry-attempts N]
//
// Queries (@defer/@stream over multipart/mixed), the run ends with the operation:
//   apollo-defer   Apollo Client 3 (HttpLink, its @defer support: `deferSpec=20220824` in
//                  Accept), watchQuery until the deferred data is in: a connection's
//                  totalCount, or with --until-nodes N, N nodes in the first connection
//   apollo4-defer20220824 / apollo4-alpha9
//                  Apollo Client 4 (HttpLink) with its Defer20220824Handler or its
//                  GraphQL17Alpha9Handler (`incrementalSpec=v0.2`), watchQuery until the
//                  result's dataState is "complete"
//   urql           urql (fetchExchange) reading multipart @defer and @stream payloads of
//                  a `phoneNumbers` connection; --accept replaces its Accept header
//   Apollo's queries use --fetch-policy (default no-cache); with cache-first the results are
//   written to and read from the normalized cache, which adds __typename to every selection.
//   stdout: one JSON line; Apollo: {"results": [{"data", "errors"(, "dataState")}],
//           "accept": [the Accept header of each request]}, every result the client handed
//           out, in order (the last one is the whole answer); urql:
//           {"results": [{"nodes" (how many so far), "totalCount", "errors", "hasNext"}],
//            "data"} (the whole answer, as the last result had it)
//
// Subscriptions, each event printed as it arrives, the run ends after the event whose
// number.phoneNumber is --stop-at:
//   graphql-ws     the graphql-ws client over ws (Authorization in connectionParams)
//   graphql-sse    the graphql-sse client, distinct connections mode
//   apollo-ws      Apollo Client's GraphQLWsLink (graphql-ws underneath)
//   apollo-multipart / apollo3-multipart
//                  Apollo Client 4's / 3's HttpLink (Apollo's multipart subscription
//                  protocol), behind a RetryLink (retrying every error, 200 ms apart, at most
//                  150 times): an end the server imposes makes it subscribe again
//   stdout: one JSON line {"event": <data>} per event, then {"done": true}; the multipart
//           clients also print {"retry": <attempt>, "error": <message>} for each retry
// --retry-attempts: how often a subscription client reconnects after losing its server (the
// libraries' own retries, with their own backoff; default 0, none): a rolling deploy's test.
// The graphql-ws clients retry a refused connection too (shouldRetry, their documented recipe).
// The token goes as `Authorization: Bearer <token>` (default demo-admin). Exit 0 when the
// run ended as described; 1 with the reason on stderr otherwise; 2 for bad usage.
import { readFileSync } from 'node:fs';
// Apollo Client 3 has no package "exports" map: ESM needs the explicit index.js paths.
import {
  ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql,
} from '@apollo/client/core/index.js';
import { RetryLink } from '@apollo/client/link/retry/index.js';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions/index.js';
// Apollo Client 4 beside 3 (an npm alias); its own imports of @apollo/client/* resolve to itself.
import {
  ApolloClient as ApolloClient4, ApolloLink as ApolloLink4, HttpLink as HttpLink4,
  InMemoryCache as InMemoryCache4, NetworkStatus, gql as gql4,
} from '@apollo/client-4';
import { Defer20220824Handler, GraphQL17Alpha9Handler } from '@apollo/client-4/incremental';
import { RetryLink as RetryLink4 } from '@apollo/client-4/link/retry';
import { Client as UrqlClient, fetchExchange } from '@urql/core';
import { createClient as createSseClient } from 'graphql-sse';
import { createClient as createWsClient } from 'graphql-ws';
import WebSocket from 'ws';
import {
  cliArgs, emit, fail, jsonOption, loopbackOption, recordingFetch,
} from './lib.mjs';

const CLIENTS = [
  'apollo-defer', 'apollo4-defer20220824', 'apollo4-alpha9', 'urql', 'graphql-ws', 'graphql-sse',
  'apollo-ws', 'apollo-multipart', 'apollo3-multipart',
];
const { values } = cliArgs({
  client: { type: 'string' },
  url: { type: 'string' },
  query: { type: 'string' },
  'query-file': { type: 'string' },
  variables: { type: 'string' },
  token: { type: 'string', default: 'demo-admin' },
  'stop-at': { type: 'string' },
  'retry-attempts': { type: 'string', default: '0' },
  'until-nodes': { type: 'string' },
  accept: { type: 'string' },
  'fetch-policy': { type: 'string', default: 'no-cache' },
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
const fetchPolicy = values['fetch-policy'];
const untilNodes = values['until-nodes'] === undefined ? null : Number(values['until-nodes']);
// The Accept header of every request a client sends (what the client negotiates).
const accepts = [];
function acceptRecordingFetch() {
  const inner = recordingFetch();
  return (input, init = {}) => {
    accepts.push(new Headers(init.headers ?? {}).get('accept'));
    return inner(input, init);
  };
}

const formatErrors = (errors) => (errors ?? []).map((e) => ({
  message: e.message, code: e.extensions?.code ?? null,
}));

// Every result Apollo Client 3 hands out, until the one with the deferred data (`complete`).
function apolloDefer(complete) {
  const client = new ApolloClient({
    link: new HttpLink({ uri: url, fetch: acceptRecordingFetch(), headers: { authorization } }),
    // Results compare with plain JSON; the normalized cache needs __typename.
    cache: new InMemoryCache({ addTypename: fetchPolicy !== 'no-cache' }),
  });
  const results = [];
  return new Promise((resolve, reject) => {
    const watched = client.watchQuery({
      query: gql(query), variables, fetchPolicy, errorPolicy: 'all',
    });
    const subscription = watched.subscribe({
      next: (result) => {
        results.push({ data: result.data ?? null, errors: formatErrors(result.errors) });
        if (complete(result.data)) {
          subscription.unsubscribe();
          client.stop();
          resolve({ results, accept: accepts });
        }
      },
      error: reject,
    });
  });
}

// Every result Apollo Client 4 hands out with `handler`, until its dataState is "complete".
function apollo4(handler) {
  const client = new ApolloClient4({
    link: new HttpLink4({ uri: url, fetch: acceptRecordingFetch(), headers: { authorization } }),
    cache: new InMemoryCache4(), // adds __typename to every selection (the caller drops it)
    incrementalHandler: handler,
  });
  const results = [];
  return new Promise((resolve, reject) => {
    const watched = client.watchQuery({
      query: gql4(query), variables, fetchPolicy, errorPolicy: 'all',
    });
    const subscription = watched.subscribe({
      next: (result) => {
        results.push({
          data: result.data ?? null,
          errors: formatErrors(result.error?.errors ?? (result.error ? [result.error] : [])),
          dataState: result.dataState,
        });
        if (result.dataState === 'complete' && result.networkStatus === NetworkStatus.ready) {
          subscription.unsubscribe();
          client.stop();
          resolve({ results, accept: accepts });
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
    fetchOptions: {
      headers: { authorization, ...(values.accept ? { accept: values.accept } : {}) },
    },
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

// What a subscription client's error callback got, as an Error: a CloseEvent or an ErrorEvent
// (whose fields are getters, so JSON.stringify shows {}) by its code and reason, or its message.
function asError(err) {
  if (err instanceof Error) return err;
  if (typeof err?.code === 'number') return new Error(`closed ${err.code}: ${err.reason ?? ''}`);
  if (err?.error instanceof Error || typeof err?.message === 'string') {
    return new Error(`socket error: ${err.error?.message ?? err.message}`);
  }
  return new Error(JSON.stringify(err));
}

// graphql-ws retries only a close by default: a reconnect refused because the restarted
// server is not listening yet is an error event, which it would throw. Its own recipe for
// "retry on any connection problem" is this; graphql-sse retries network errors by default.
const retryEverything = () => true;

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
    shouldRetry: retryEverything,
  });
  return new Promise((resolve, reject) => {
    const onEvent = printer(resolve);
    const stop = client.subscribe({ query, variables }, {
      next: (result) => {
        if (result.errors) reject(new Error(JSON.stringify(result.errors)));
        else if (onEvent(result.data)) stop();
      },
      error: (err) => reject(asError(err)),
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
      error: (err) => reject(asError(err)),
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
    shouldRetry: retryEverything,
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

// Apollo's multipart subscriptions over `HttpLink`, behind a RetryLink that retries every
// error (the standard way to have Apollo Client subscribe again when a server ends it).
function apolloMultipart({
  Client, Link, Http, Retry, cache, parse,
}) {
  const retry = new Retry({
    delay: { initial: 200, max: 200, jitter: false },
    attempts: (attempt, _operation, error) => {
      emit({ retry: attempt, error: error?.message ?? String(error) });
      return attempt <= 150;
    },
  });
  const http = new Http({ uri: url, fetch: acceptRecordingFetch(), headers: { authorization } });
  const client = new Client({ link: Link.from([retry, http]), cache });
  return new Promise((resolve, reject) => {
    const onEvent = printer(resolve);
    const subscription = client.subscribe({
      query: parse(query), variables, fetchPolicy: 'no-cache',
    }).subscribe({
      next: (result) => {
        if (result.error || result.errors?.length) {
          reject(new Error(JSON.stringify(result.error ?? result.errors)));
        } else if (onEvent(result.data)) subscription.unsubscribe();
      },
      error: reject,
      complete: () => reject(new Error('the subscription completed early')),
    });
  }).finally(() => client.stop());
}

// The deferred fragment's data: `totalCount` of the first connection in the answer; with
// --until-nodes, that many nodes in it too.
const hasDeferredCount = (data) => Object.values(data ?? {}).some((connection) => (
  untilNodes === null ? typeof connection?.totalCount === 'number'
    : connection?.nodes?.length === untilNodes
      && (!/totalCount/.test(query) || typeof connection?.totalCount === 'number')));

try {
  switch (values.client) {
    case 'apollo-defer': emit(await apolloDefer(hasDeferredCount)); break;
    case 'apollo4-defer20220824': emit(await apollo4(new Defer20220824Handler())); break;
    case 'apollo4-alpha9': emit(await apollo4(new GraphQL17Alpha9Handler())); break;
    case 'urql': emit(await urql()); break;
    case 'apollo-multipart':
      await apolloMultipart({
        Client: ApolloClient4, Link: ApolloLink4, Http: HttpLink4, Retry: RetryLink4,
        cache: new InMemoryCache4(), parse: gql4,
      });
      emit({ done: true });
      break;
    case 'apollo3-multipart':
      await apolloMultipart({
        Client: ApolloClient, Link: ApolloLink, Http: HttpLink, Retry: RetryLink,
        cache: new InMemoryCache({ addTypename: false }), parse: gql,
      });
      emit({ done: true });
      break;
    case 'graphql-ws': await graphqlWs(); emit({ done: true }); break;
    case 'graphql-sse': await graphqlSse(); emit({ done: true }); break;
    default: await apolloWs(); emit({ done: true }); break;
  }
  process.exitCode = 0; // not exit(): stdout (a pipe) is written out first
} catch (err) {
  fail(`${values.client}: ${err?.stack ?? err}`);
}
