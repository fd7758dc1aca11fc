// Compose subgraph SDL files into a supergraph with one of two composers.
//
//   node compose.mjs <apollo|guild> <name=path.graphql> [<name=path.graphql> ...]
//
// stdout: one JSON line
//   {"ok": bool, "composer": "apollo"|"guild", "errors": [message], "codes": [code],
//    "hints": [message], "supergraphSdl": string|null}
// Exit 0 whether or not composition succeeds (the Python side asserts); 2 for bad usage.
//
// Both composers take the same input: [{name, typeDefs: DocumentNode, url}].
//   apollo: @apollo/composition composeServices -> {errors} | {supergraphSdl, hints}
//   guild:  @theguild/federation-composition composeServices -> {errors} | {supergraphSdl};
//           it gives no hints, and its result also has publicSdl (the API schema).
import { readFileSync } from 'node:fs';
import { parse } from 'graphql';
import { cliArgs, emit, fail, splitPair } from './lib.mjs';

const { positionals } = cliArgs({}, { positionals: true });
const [composer, ...specs] = positionals;
if (!['apollo', 'guild'].includes(composer) || specs.length === 0) {
  fail('usage: compose.mjs <apollo|guild> <name=path.graphql> ...', 2);
}

const result = { ok: false, composer, errors: [], codes: [], hints: [], supergraphSdl: null };
try {
  const services = specs.map((spec) => {
    const [name, path] = splitPair(spec, 'subgraph');
    // The URL only lands in the supergraph's join__graph(url:); nothing is fetched.
    return { name, url: `http://127.0.0.1/${name}/graphql`, typeDefs: parse(readFileSync(path, 'utf8')) };
  });
  const { composeServices } = composer === 'apollo'
    ? await import('@apollo/composition')
    : await import('@theguild/federation-composition');
  const out = composeServices(services);
  const errors = out.errors ?? [];
  result.errors = errors.map((e) => e.message);
  result.codes = errors.map((e) => e.extensions?.code ?? null);
  result.hints = (out.hints ?? []).map((h) => h.message ?? String(h));
  result.ok = errors.length === 0 && typeof out.supergraphSdl === 'string';
  result.supergraphSdl = out.supergraphSdl ?? null;
} catch (err) {
  // A file that does not parse, or a composer that throws instead of reporting.
  result.errors.push(err.message ?? String(err));
  result.codes.push(err.extensions?.code ?? 'EXCEPTION');
}
emit(result);
