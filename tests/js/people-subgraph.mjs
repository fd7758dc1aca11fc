// A second federation-2 subgraph for supergraph tests: it OWNS Person and Location's extra fields.
//
//   node people-subgraph.mjs --data people.json [--port 0] [--request-log requests.jsonl]
//
// --data: {"me": "<person id>", "people": [{"id", "displayName"}],
//          "locations": [{"id", "name", "timeZone"}]}
//   (the Python test fills it with ids that exist in the numbers gateway's simulator).
// --request-log: append one JSON line per GraphQL request received:
//   {"operationName", "authorization", "routerSecret", "query"}   (to check what the
//   supergraph forwarded; routerSecret is the Gateway-Router-Secret header).
// stdout: exactly one line, `listening http://127.0.0.1:<port>/`, once ready. Logs go to stderr.
// Entities it does not know resolve to null (as a real service answers an unknown id).
import { appendFileSync, readFileSync } from 'node:fs';
import { ApolloServer } from '@apollo/server';
import { startStandaloneServer } from '@apollo/server/standalone';
import { buildSubgraphSchema } from '@apollo/subgraph';
import { parse } from 'graphql';
import {
  announce, cliArgs, fail, loopbackUrl, noPhoneHome, portOption, stderrLogger, stopOnSignals,
} from './lib.mjs';

noPhoneHome();
const { values } = cliArgs({
  port: { type: 'string', default: '0' },
  data: { type: 'string' },
  'request-log': { type: 'string' },
});
if (!values.data) fail('usage: people-subgraph.mjs --data people.json [--port N]', 2);
const data = JSON.parse(readFileSync(values.data, 'utf8'));
const people = data.people ?? [];
const locations = data.locations ?? [];

// Federation v2.3: accepted by @apollo/composition, @theguild/federation-composition (up to
// v2.9) and @apollo/gateway alike.
const typeDefs = parse(`
  extend schema @link(url: "https://specs.apollo.dev/federation/v2.3", import: ["@key", "@shareable"])

  type Query {
    "The caller, per --data's me."
    me: Person
    people: [Person!]!
    locations: [Location!]!
  }

  type Person @key(fields: "id") {
    id: ID!
    displayName: String
  }

  type Location @key(fields: "id") {
    id: ID!
    name: String @shareable
    timeZone: String
  }
`);

const byId = (list, id) => list.find((item) => item.id === id) ?? null;
const resolvers = {
  Query: {
    me: () => byId(people, data.me),
    people: () => people,
    locations: () => locations,
  },
  Person: { __resolveReference: ({ id }) => byId(people, id) },
  Location: { __resolveReference: ({ id }) => byId(locations, id) },
};

const server = new ApolloServer({
  schema: buildSubgraphSchema([{ typeDefs, resolvers }]),
  logger: stderrLogger,
});
const { url } = await startStandaloneServer(server, {
  listen: { port: portOption(values.port), host: '127.0.0.1' },
  context: async ({ req }) => {
    if (values['request-log']) {
      const body = req.body ?? {};
      appendFileSync(values['request-log'], `${JSON.stringify({
        operationName: body.operationName ?? null,
        authorization: req.headers.authorization ?? null,
        routerSecret: req.headers['gateway-router-secret'] ?? null,
        query: body.query ?? null,
      })}\n`);
    }
    return {};
  },
});
stopOnSignals(() => server.stop());
announce(loopbackUrl(new URL(url)));
