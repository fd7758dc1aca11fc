// Shared helpers for the harness scripts in this folder (imported by relative path).
//
// Everything here exists to keep the scripts small and safe:
//   * cliArgs()        parses argv with node:util's parseArgs (unknown flags are an error);
//   * jsonOption()     parses a JSON-valued flag with a clear error;
//   * noPhoneHome()    turns off Apollo's outbound telemetry before any Apollo object is built;
//   * assertLoopback() refuses any URL that is not on this machine (loopbackOption: for argv);
//   * recordingFetch() wraps the global fetch: loopback only, optional extra headers, and an
//                      optional log of every request (method, url, headers, body, status,
//                      response);
//   * emit()/fail()    print one JSON line on stdout / a message on stderr and exit;
//   * stderrLogger     a logger for Apollo Server/Gateway that keeps stdout for results.
import { parseArgs } from 'node:util';

export function cliArgs(options, { positionals = false } = {}) {
  try {
    return parseArgs({ options, allowPositionals: positionals, strict: true });
  } catch (err) {
    fail(`${err.message}`, 2);
  }
}

export function jsonOption(text, name, fallback) {
  if (text === undefined) return fallback;
  try {
    return JSON.parse(text);
  } catch (err) {
    fail(`--${name} is not valid JSON: ${err.message}`, 2);
  }
}

// @apollo/gateway (2.x) starts a metrics exporter to Apollo's cloud, with cloud-metadata
// resource detectors, unless APOLLO_TELEMETRY_DISABLED is set; @apollo/server reports usage and
// schema when APOLLO_KEY is set. Tests send traffic only to 127.0.0.1, so turn all of it off.
export function noPhoneHome() {
  process.env.APOLLO_TELEMETRY_DISABLED = 'true';
  for (const name of ['APOLLO_KEY', 'APOLLO_GRAPH_REF', 'APOLLO_GRAPH_ID', 'APOLLO_GRAPH_VARIANT',
    'APOLLO_SCHEMA_REPORTING']) {
    delete process.env[name];
  }
}

const LOOPBACK = /^(localhost|127(\.\d{1,3}){3}|\[::1\])$/i;

export function assertLoopback(url) {
  const { protocol, hostname } = new URL(url);
  if (!/^https?:$/.test(protocol) || !LOOPBACK.test(hostname)) {
    throw new Error(`refusing non-loopback URL ${url}: the harness only talks to this machine`);
  }
  return url;
}

// assertLoopback for a command-line URL: a refusal is a usage error (exit 2).
export function loopbackOption(url, flag = '--url') {
  try {
    return assertLoopback(url);
  } catch (err) {
    fail(`${flag}: ${err.message}`, 2);
  }
}

function headersObject(headers) {
  const out = {};
  new Headers(headers ?? {}).forEach((value, key) => { out[key] = value; });
  return out;
}

function parseBody(body) {
  if (body === undefined || body === null) return null;
  const text = typeof body === 'string' ? body : String(body);
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

// A fetch for clients and audits: loopback only, `extraHeaders` added when the caller did not
// set them, and when `log` is an array, one entry per request:
//   {method, url, headers, body, status, response}
// (body and response are parsed as JSON when they are JSON, else text; body null for GET).
export function recordingFetch({ log = null, extraHeaders = {} } = {}) {
  return async (input, init = {}) => {
    const request = input instanceof Request ? input : null; // else a string or a URL
    const url = request ? request.url : String(input);
    assertLoopback(url);
    const headers = new Headers(init.headers ?? request?.headers ?? {});
    for (const [key, value] of Object.entries(extraHeaders)) {
      if (!headers.has(key)) headers.set(key, value);
    }
    const method = String(init.method ?? request?.method ?? 'GET').toUpperCase();
    const entry = { method, url, headers: headersObject(headers), body: parseBody(init.body) };
    if (log) log.push(entry);
    const response = await globalThis.fetch(input, { ...init, headers });
    entry.status = response.status;
    if (log) entry.response = parseBody(await response.clone().text());
    return response;
  };
}

export function emit(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

export function fail(message, code = 1) {
  process.stderr.write(`${message}\n`);
  process.exit(code);
}

// Apollo Server / Gateway logger that keeps stdout for the one `listening` line.
const log = (level) => (...parts) => process.stderr.write(`[${level}] ${parts.join(' ')}\n`);
export const stderrLogger = {
  debug: () => {}, info: log('info'), warn: log('warn'), error: log('error'),
};

// Servers print exactly one stdout line once ready, and nothing else on stdout.
export function announce(url) {
  process.stdout.write(`listening ${url}\n`);
}

// Close a server on SIGTERM/SIGINT so the Python side can stop it cleanly; exit after
// `graceMs` at most (Apollo's drain otherwise waits up to 10 s for keep-alive clients).
export function stopOnSignals(stop, graceMs = 2000) {
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.once(signal, () => {
      setTimeout(() => process.exit(0), graceMs).unref();
      Promise.resolve(stop()).finally(() => process.exit(0));
    });
  }
}

// "name=value" -> [name, value]; the value may itself contain "=".
export function splitPair(text, flag) {
  const at = text.indexOf('=');
  if (at <= 0) fail(`${flag} expects name=value, got ${JSON.stringify(text)}`, 2);
  return [text.slice(0, at), text.slice(at + 1)];
}

export function portOption(text) {
  const port = Number(text ?? '0');
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad --port ${text}`, 2);
  return port;
}

// The URL a server bound to 127.0.0.1 answers on, from its listening address.
export function loopbackUrl(address, path = '/') {
  return `http://127.0.0.1:${address.port}${path}`;
}
