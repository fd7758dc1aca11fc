// Hive Gateway (The Guild's federation router, the runtime of Hive Gateway 2.15) over a
// supergraph, the way a platform team runs it in front of the numbers gateway.
//
//   node hive-gateway.mjs --supergraph supergraph.graphql [--port 0] \
//        [--subgraph numbers=http://127.0.0.1:8000/graphql ...] \
//        [--subgraph-header Gateway-Router-Secret=xyz ...] [--max-cost 10000]
//
// --supergraph: a supergraph SDL file (compose.mjs's supergraphSdl).
// --subgraph name=url: where subgraph `name` (as composed) really listens; compose.mjs writes
//   placeholder URLs into join__graph, so each subgraph the plan calls needs one. Loopback only.
// --subgraph-header name=value: a static header on every subgraph request (how a router sends
//   GATEWAY_ROUTER_SECRET as Gateway-Router-Secret), repeatable.
// --max-cost n: Hive Gateway's demand control, pricing each subgraph request from the
//   supergraph's @cost/@listSize and refusing a plan over n (COST_ESTIMATED_TOO_EXPENSIVE)
//   before the subgraph is called; the estimate is reported in extensions.cost.
// The caller's Authorization is forwarded to every subgraph (header propagation); no other
// caller header is.
//
// stdout: exactly one line, `listening http://127.0.0.1:<port>/graphql`, once serving. Logs
// go to stderr. Exit 1 (reason on stderr) if the supergraph cannot be read or served.
// Hive Gateway reports nothing anywhere unless told to (no registry token is given here);
// GraphiQL and the landing page are off, so it fetches nothing from a CDN either.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import {
  createGatewayRuntime, useCustomFetch,
} from '@graphql-hive/gateway-runtime';
import {
  announce, assertLoopback, cliArgs, fail, loopbackOption, loopbackUrl, noPhoneHome, portOption,
  splitPair, stopOnSignals,
} from './lib.mjs';

noPhoneHome();
const { values } = cliArgs({
  port: { type: 'string', default: '0' },
  supergraph: { type: 'string' },
  subgraph: { type: 'string', multiple: true, default: [] },
  'subgraph-header': { type: 'string', multiple: true, default: [] },
  'max-cost': { type: 'string' },
});
if (!values.supergraph) fail('usage: hive-gateway.mjs --supergraph file [--subgraph name=url]', 2);
let supergraphSdl;
try {
  supergraphSdl = readFileSync(values.supergraph, 'utf8');
} catch (err) {
  fail(`cannot read --supergraph: ${err.message}`);
}
const transportEntries = {};
for (const spec of values.subgraph) {
  const [name, url] = splitPair(spec, '--subgraph');
  transportEntries[name] = { location: loopbackOption(url, '--subgraph') };
}
let demandControl;
if (values['max-cost'] !== undefined) {
  const maxCost = Number(values['max-cost']);
  if (!Number.isInteger(maxCost) || maxCost < 1) fail('--max-cost must be a positive integer', 2);
  demandControl = { maxCost, includeExtensionMetadata: true };
}
const staticHeaders = Object.fromEntries(
  values['subgraph-header'].map((spec) => splitPair(spec, '--subgraph-header')),
);

// Every subgraph request goes through the global fetch behind the loopback guard.
const guardedFetch = (url, init) => globalThis.fetch(assertLoopback(String(url)), init);

const gateway = createGatewayRuntime({
  supergraph: () => supergraphSdl,
  transportEntries,
  graphqlEndpoint: '/graphql',
  graphiql: false,
  landingPage: false,
  logging: 'warn',
  // Header propagation as Hive Gateway documents it: the caller's Authorization to every
  // subgraph, and the configured static headers (a router secret) on every subgraph request.
  propagateHeaders: {
    fromClientToSubgraphs({ request }) {
      const headers = { ...staticHeaders };
      const authorization = request.headers.get('authorization');
      if (authorization) headers.authorization = authorization;
      return headers;
    },
  },
  plugins: () => [useCustomFetch(guardedFetch)],
  ...(demandControl ? { demandControl } : {}),
});

const server = createServer(gateway);
server.on('error', (err) => fail(`hive gateway failed: ${err.message}`));
server.listen(portOption(values.port), '127.0.0.1', async () => {
  try {
    // Load and plan the supergraph now, so `listening` means ready (and a bad file fails here).
    const response = await gateway.fetch('http://127.0.0.1/graphql', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query: '{ __typename }' }),
    });
    const body = await response.json();
    if (body?.data?.__typename !== 'Query') throw new Error(JSON.stringify(body));
  } catch (err) {
    fail(`hive gateway could not serve the supergraph: ${err.message}`);
  }
  stopOnSignals(async () => {
    await gateway.dispose();
    server.close();
  });
  announce(loopbackUrl(server.address(), '/graphql'));
});
