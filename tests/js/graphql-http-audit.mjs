// The GraphQL-over-HTTP spec audit suite of graphql-http (serverAudits) against one URL.
//
//   node graphql-http-audit.mjs --url URL [--headers JSON]
//
// --headers: added to every audit request (unless the audit sets that header itself).
// stdout: one JSON line
//   {"results": [{"id", "name", "status", "reason"}], "ok": n, "notice": n, "warn": n, "error": n}
//   status is ok | notice | warn | error; name starts with MUST, SHOULD or MAY; reason is null
//   when ok. Exit 0 whatever the audits found (the Python side asserts); 2 for bad usage.
import { serverAudits } from 'graphql-http';
import {
  cliArgs, emit, fail, jsonOption, loopbackOption, recordingFetch,
} from './lib.mjs';

const { values } = cliArgs({ url: { type: 'string' }, headers: { type: 'string' } });
if (!values.url) fail('usage: graphql-http-audit.mjs --url URL [--headers JSON]', 2);
const fetchFn = recordingFetch({ extraHeaders: jsonOption(values.headers, 'headers', {}) });

const results = [];
const counts = { ok: 0, notice: 0, warn: 0, error: 0 };
// One audit at a time, in the suite's order: the server sees a steady, bounded sequence.
for (const audit of serverAudits({ url: loopbackOption(values.url), fetchFn })) {
  let result;
  try {
    result = await audit.fn();
  } catch (err) {
    result = { id: audit.id, name: audit.name, status: 'error', reason: `threw: ${err.message}` };
  }
  counts[result.status] = (counts[result.status] ?? 0) + 1;
  results.push({
    id: result.id,
    name: result.name,
    status: result.status,
    reason: result.status === 'ok' ? null : result.reason,
  });
}
emit({ results, ...counts });
