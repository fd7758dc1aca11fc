// Decode a federated trace (ftv1) with Apollo's own protobuf definitions, as a router does.
//
//   node decode-ftv1.mjs <base64>        or        echo <base64> | node decode-ftv1.mjs
//
// stdout: one JSON line, the Trace as @apollo/usage-reporting-protobuf's Trace.toObject gives
// it (field names in camelCase, 64-bit integers as numbers, Timestamps as {seconds, nanos},
// the oneof `id` of a node named), e.g.
//   {"startTime": {...}, "endTime": {...}, "durationNs": 123, "root": {"child": [...]}}
// Exit 1 with the reason on stderr when the input is empty, not base64, or not a Trace.
import { readFileSync } from 'node:fs';
import { Trace } from '@apollo/usage-reporting-protobuf';
import { cliArgs, emit, fail } from './lib.mjs';

const { positionals } = cliArgs({}, { positionals: true });
if (positionals.length > 1) fail('usage: decode-ftv1.mjs [<base64>]  (or the base64 on stdin)', 2);
const text = (positionals[0] ?? readFileSync(0, 'utf8')).trim();
if (!text) fail('no ftv1 given (an argument or stdin)');
if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
  fail('ftv1 is not base64');
}
const bytes = Buffer.from(text, 'base64');
let trace;
try {
  trace = Trace.decode(bytes);
} catch (err) {
  fail(`ftv1 does not decode as an Apollo Trace: ${err.message}`);
}
const problem = Trace.verify(trace);
if (problem) fail(`ftv1 decodes to an invalid Trace: ${problem}`);
emit(Trace.toObject(trace, { longs: Number, oneofs: true, defaults: false }));
