// An Apollo Gateway (JS) supergraph over running subgraphs, the way a platform team composes
// the numbers gateway with its other services.
//
//   node supergraph-gateway.mjs [--port 0] --subgraph numbers=http://127.0.0.1:8000/graphql \
//                               --subgraph people=http://127.0.0.1:9000/ [...] \
//                               [--subgraph-header Gateway-Router-Secret=xyz ...]
//
// --subgraph-header name=value: a static header on every subgraph request, the introspection
// at start-up included (how a router sends GATEWAY_ROUTER_SECRET), repeatable.
// stdout: exactly one line, `listening http://127.0.0.1:<port>/`, once the supergraph is composed
// and served. Exit 1 (reason on stderr) if a subgraph cannot be reached or composition fails.
//
// IntrospectAndCompose asks each subgraph for `{ _service { sdl } }` at start-up, so every
// subgraph must be up first and must answer `_service` (in every environment, even where
// introspection is off), and composes them in-process with @apollo/composition.
import { ApolloGateway, IntrospectAndCompose, RemoteGraphQLDataSource } from '@apollo/gateway';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import {
  announce, cliArgs, fail, loopbackOption, loopbackUrl, noPhoneHome, portOption, recordingFetch,
  splitPair, stderrLogger, stopOnSignals,
} from './lib.mjs';

// Must run before `new ApolloGateway`: the gateway otherwise starts Apollo's metrics exporter.
noPhoneHome();
const { values } = cliArgs({
  port: { type: 'string', default: '0' },
  subgraph: { type: 'string', multiple: true, default: [] },
  'subgraph-header': { type: 'string', multiple: true, default: [] },
});
if (values.subgraph.length === 0) fail('usage: supergraph-gateway.mjs --subgraph name=url ...', 2);
const subgraphs = values.subgraph.map((spec) => {
  const [name, url] = splitPair(spec, '--subgraph');
  return { name, url: loopbackOption(url, '--subgraph') };
});
const staticHeaders = values['subgraph-header'].map((spec) => splitPair(spec, '--subgraph-header'));

// Header propagation: the way to forward the caller's credentials to every subgraph.
//  1. `context` (below, in startStandaloneServer) copies the incoming Authorization header
//     into the per-request context;
//  2. this data source's `willSendRequest` copies it onto each subgraph request.
// Only Authorization is forwarded; the numbers gateway passes it on to Webex unchanged.
// At start-up IntrospectAndCompose calls willSendRequest with an empty context (no header).
// The --subgraph-header headers go on every subgraph request, whoever the caller.
class AuthorizationForwardingDataSource extends RemoteGraphQLDataSource {
  willSendRequest({ request, context }) {
    for (const [name, value] of staticHeaders) request.http.headers.set(name, value);
    if (context?.authorization) {
      request.http.headers.set('authorization', context.authorization);
    }
  }
}

const gateway = new ApolloGateway({
  supergraphSdl: new IntrospectAndCompose({ subgraphs, logger: stderrLogger }),
  logger: stderrLogger,
  // The global fetch (undici), behind a loopback-only guard, instead of make-fetch-happen.
  buildService: ({ url }) => new AuthorizationForwardingDataSource({
    url,
    fetcher: recordingFetch(),
  }),
});

const server = new ApolloServer({ gateway, logger: stderrLogger });
let url;
try {
  ({ url } = await startStandaloneServer(server, {
    listen: { port: portOption(values.port), host: '127.0.0.1' },
    context: async ({ req }) => ({ authorization: req.headers.authorization }),
  }));
} catch (err) {
  fail(`supergraph start failed: ${err.message}`);
}
stopOnSignals(() => server.stop());
announce(loopbackUrl(new URL(url)));
