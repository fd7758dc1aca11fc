"""Peer benchmark: numbers-gateway against Tailcall, Hive Gateway and a hand-written proxy over
one static upstream, every ratio of issue 31 printed side by side from one run (run by hand).

Over HTTP, caching off, each server in front of the same static upstream
(`benchmarks/static_upstream.py`: fixed bytes, a 50-item or a 2,000-item page), each asked
for every PhoneNumber field (`large_page.FIELDS`), and each answer's items checked equal to
numbers-gateway's, field for field (times compared as instants: the peers pass the upstream's
text on, the gateway writes its `DateTime`). The servers:

- numbers-gateway as `numbers-gateway serve` runs it, in one process and with `--workers 2`;
- Tailcall 1.0.0 (Rust; its prebuilt binary from npm) serving `benchmarks/peer/tailcall.graphql`:
  the same endpoint and fields, the caller's `Authorization` forwarded, identical concurrent
  asks of one caller deduplicated (as numbers-gateway's single flight does);
- Hive Gateway serving a supergraph that GraphQL Mesh composes from `schema/openapi.yaml`
  (`benchmarks/peer/mesh.config.ts`);
- `benchmarks/hand_proxy.py` (Starlette + httpx + orjson, a dict projection of the same fields,
  no GraphQL): the floor of an uncached request;
- the static upstream alone: the ceiling of what this load generator and upstream can do on
  the same cores.

Every row is loaded twice: with a token per load client (numbers-gateway's single flight, on
even with caching off, cannot merge the clients' asks into one upstream call) and with one
shared token (as one service account behind a frontend would send; single flight and
Tailcall's dedupe may merge). `--callers` picks one. `--passes N` repeats the whole sweep N
times, interleaved, and prints each ratio's median and range. Every server is asked with the
same `Accept-Encoding` (`identity` unless `--accept-encoding`): compressing a megabyte is its
own cost, and not every server pays it. The load comes from wrk when it is installed (Debian's
package; `--load`): one thread and one connection per load client, each answer's status and
length checked by its Lua script; an httpx loop in this process otherwise, which caps the
fastest server (Tailcall at 50 items) near the ceiling row's figure.

Then, in the same run: a repeated 50-item query, as a POST (what frontends send) and as a GET,
to a numbers-gateway with caching on (its stored answer served again) against bare Starlette
returning the same bytes (`benchmarks/repeat_query.py`'s load: wrk when installed); the
in-process 2,000-item page against `orjson.loads` + `dumps` of its upstream body
(`benchmarks/phases.py`); and 100,000 entries streamed in process
(`benchmarks/stream_inventory.py`). The targets (issue 31), printed beside the ratios:

    2,000 items uncached     >= 1.0x Tailcall, and >= 1.0x the hand-written proxy with a
                             token per client
    50 items uncached        >= 0.5x Tailcall
    a repeated 50-item POST  >= 0.5x bare Starlette returning the bytes
    in process, 2,000 items  <= 1.0x the orjson round trip of the upstream body
    100,000 items streamed   >= 2x the items/s of the tree before issue 31 (with
                             --stream-before PATH: that tree's stream_inventory.py run in turn
                             with ours), and a peak RSS growth <= 96 MiB

Where one is missed, one request's time by phase follows (`benchmarks/phases.py`: read,
decode, project, encode, GraphQL overhead, middleware in process; the server's share is a
sequential HTTP request's latency less the in-process app).

The npm packages (exact versions in `benchmarks/peer/package-lock.json`; Tailcall's binary
package is an optional dependency, installed on Linux x64 with glibc only, and pinned at 1.0.0:
later builds need glibc 2.38) are installed with `npm ci` into
`${XDG_CACHE_HOME:-~/.cache}/numbers-gateway/peer-<sha16 of the lock>/`, never into the repo.
Every process it starts listens on 127.0.0.1, and every one is stopped on the way out (error
and Ctrl-C included). Every load is bounded in time (the httpx loop in requests too).

    .venv/bin/python benchmarks/peer_gateway.py [--duration 10] [--concurrency 4] [--warmup 3]
    .venv/bin/python benchmarks/peer_gateway.py --duration 3 --warmup 1 --passes 2
    .venv/bin/python benchmarks/peer_gateway.py --skip-hive --skip-tailcall  # no node
    .venv/bin/python benchmarks/peer_gateway.py --install-only
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import orjson
import phases
import repeat_query
from large_page import FIELDS

REPO = Path(__file__).resolve().parents[1]
PEER_SOURCES = REPO / "benchmarks" / "peer"
PEER_FILES = ("package.json", "package-lock.json", "mesh.config.ts")
TAILCALL_CONFIG = PEER_SOURCES / "tailcall.graphql"
TAILCALL_PACKAGE = "@tailcallhq/core-linux-x64-gnu"
OPENAPI = REPO / "schema" / "openapi.yaml"
STATIC_UPSTREAM = REPO / "benchmarks" / "static_upstream.py"
HAND_PROXY = REPO / "benchmarks" / "hand_proxy.py"
STREAM_INVENTORY = REPO / "benchmarks" / "stream_inventory.py"
OURS, OURS_TWO = "numbers-gateway", "numbers-gateway, 2 workers"
PROXY, HIVE, TAILCALL = "hand-written proxy", "hive-gateway", "tailcall"
CEILING = "static upstream (REST)"
# The static upstream wants a bearer token and checks nothing else. Each load client is its
# own caller with SEPARATE; with SHARED all send one token, and numbers-gateway's single
# flight (on even with caching off) and Tailcall's dedupe may merge identical concurrent asks.
CALLER_PREFIX = "Bearer peer-benchmark-"
SEPARATE, SHARED = "a token per client", "one shared token"
PAGE_SIZES = (2000, 50)
# Issue 31's targets, ours / a peer in requests per second: (page size, peer, callers) ->
# target. The proxy's holds with a token per client only (it has no single flight to merge
# one caller's asks); Tailcall's dedupe is the peer of single flight, so its hold with both.
TARGETS = {
    (2000, TAILCALL, SEPARATE): 1.0,
    (2000, TAILCALL, SHARED): 1.0,
    (2000, PROXY, SEPARATE): 1.0,
    (50, TAILCALL, SEPARATE): 0.5,
    (50, TAILCALL, SHARED): 0.5,
}
REPEAT_TARGET = 0.5  # a repeated 50-item query, ours (caching on) / bare Starlette
IN_PROCESS_TARGET = 1.0  # the 2,000-item page in process / orjson.loads + dumps
STREAM_RSS_LIMIT_MIB = 96.0  # 100,000 items streamed: peak RSS growth over idle
STREAM_SPEED_TARGET = 2.0  # ... at twice the items/s of the tree before issue 31
MAX_REQUESTS = 200_000  # per measurement, on top of the time bound
REQUEST_TIMEOUT = 60.0
START_TIMEOUT = 90.0

# The same selection for every server: every PhoneNumber field, nested objects included.
PHONE_NUMBER_FIELDS = FIELDS
OUR_QUERY = f"""query PeerPage($size: Int!) {{
  phoneNumbers(page: {{first: $size}}) {{ nodes {{ {PHONE_NUMBER_FIELDS} }} }}
}}"""
# Mesh names the root field after the operationId and keeps each query parameter as an
# argument; the 200 and the error bodies become a union, so the page is an inline fragment.
HIVE_QUERY = f"""query PeerPage($size: Int!) {{
  listPhoneNumbers(max: $size) {{
    ... on PhoneNumberList {{ phoneNumbers {{ {PHONE_NUMBER_FIELDS} }} }}
    ... on WebexError {{ message trackingId }}
  }}
}}"""
# benchmarks/peer/tailcall.graphql: one field, the upstream's page object as it comes.
TAILCALL_QUERY = f"""query PeerPage($size: Int!) {{
  listPhoneNumbers(max: $size) {{ phoneNumbers {{ {PHONE_NUMBER_FIELDS} }} }}
}}"""


@dataclass(frozen=True, slots=True)
class Target:
    """One thing to load: a name, a URL, and how to make and read its request."""

    name: str
    url: str
    method: str
    body: Callable[[int], bytes | None]
    items: Callable[[Any], list[Any]]


@dataclass(slots=True)
class Measurement:
    target: str
    page_size: int
    callers: str
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    upstream_calls: int = 0
    # Quantiles (ms) the load generator computed itself (wrk), when it keeps no latencies.
    quantiles: dict[int, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        """Successful answers per second: a failed request counts for nothing."""
        return (self.requests - self.failures) / self.seconds if self.seconds else 0.0

    def quantile_ms(self, q: int) -> float:
        if q in self.quantiles:
            return self.quantiles[q]
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000


# --- installing the peers -------------------------------------------------------------------


def cache_root() -> Path:
    configured = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(configured) if os.path.isabs(configured) else Path.home() / ".cache"
    return base / "numbers-gateway"


def peer_home() -> Path:
    lock = (PEER_SOURCES / "package-lock.json").read_bytes()
    return cache_root() / f"peer-{hashlib.sha256(lock).hexdigest()[:16]}"


def install_peer() -> Path:
    """`npm ci` the pinned packages into the cache folder, once per lock file."""
    home = peer_home()
    home.mkdir(parents=True, exist_ok=True)
    for name in PEER_FILES:  # the config is refreshed every run; the lock names the folder
        shutil.copyfile(PEER_SOURCES / name, home / name)
    marker = home / ".installed"
    if marker.exists() and (home / "node_modules" / ".bin" / "hive-gateway").exists():
        return home
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm not found: the peer benchmark needs node 20+ and npm")
    print(f"installing the peers into {home} (npm ci) ...", flush=True)
    started = time.monotonic()
    subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=home,
        check=True,
        timeout=900,
    )
    marker.write_text(f"npm ci took {time.monotonic() - started:.0f} s\n")
    print(f"installed in {time.monotonic() - started:.0f} s", flush=True)
    return home


def tailcall_binary(home: Path) -> Path:
    """Tailcall's executable in the install, or why there is none."""
    binary = home / "node_modules" / TAILCALL_PACKAGE / "bin" / "tailcall"
    if not binary.exists():
        raise SystemExit(
            f"{TAILCALL_PACKAGE} is not installed in {home}: it is built for Linux x64 with "
            "glibc only (npm skips it elsewhere); run with --skip-tailcall"
        )
    return binary


def pinned_versions() -> str:
    package = json.loads((PEER_SOURCES / "package.json").read_text())
    pinned = {**package["dependencies"], **package.get("optionalDependencies", {})}
    return ", ".join(f"{name} {version}" for name, version in pinned.items())


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Fleet:
    """The processes this run started, each in its own process group, stopped in reverse."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, args: list[str], env: Mapping[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                args,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the group ourselves
            )
        self.processes.append((name, process))
        return process

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        for _, process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=5)
        self.processes.clear()


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):  # its own group: start_new_session made pgid == pid
        os.killpg(process.pid, signum)


def wait_ready(fleet: Fleet, name: str, process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}:\n{fleet.log_tail(name)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{name} not ready at {url} in {START_TIMEOUT:.0f} s:\n{fleet.log_tail(name)}")


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PEER_"))}


def numbers_gateway_command() -> str:
    local = REPO / ".venv" / "bin" / "numbers-gateway"
    found = str(local) if local.exists() else shutil.which("numbers-gateway")
    if found is None:
        raise SystemExit("numbers-gateway not found: run `make run` once to create .venv")
    return found


def compose_supergraph(home: Path, upstream: str, output: Path) -> None:
    """`mesh-compose` in the cache folder: schema/openapi.yaml -> a supergraph file."""
    env = {**base_env(), "PEER_OPENAPI_SOURCE": str(OPENAPI), "PEER_UPSTREAM_URL": upstream}
    result = subprocess.run(
        [str(home / "node_modules" / ".bin" / "mesh-compose"), "-o", str(output)],
        cwd=home,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if result.returncode != 0 or not output.exists():
        raise SystemExit(f"mesh-compose failed ({result.returncode}):\n{result.stdout}")


# --- load -----------------------------------------------------------------------------------


def graphql_body(query: str) -> Callable[[int], bytes | None]:
    def body(size: int) -> bytes:
        return json.dumps({"query": query, "variables": {"size": size}}).encode()

    return body


def comparable(items: list[Any]) -> list[Any]:
    """Items as the pages are compared: an owner's ``elinExpiryTime`` as the instant it names
    (numbers-gateway writes its ``DateTime`` as ``+00:00``; the peers pass the upstream's
    ``...000Z`` text on), everything else as answered."""
    found: list[Any] = []
    for item in items:
        owner = item.get("owner") if isinstance(item, dict) else None
        moment = owner.get("elinExpiryTime") if isinstance(owner, dict) else None
        if isinstance(moment, str):
            instant = datetime.fromisoformat(moment)
            when = instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant
            item = {**item, "owner": {**owner, "elinExpiryTime": when.astimezone(UTC)}}
        found.append(item)
    return found


async def reference_body(client: httpx.AsyncClient, target: Target, size: int) -> bytes:
    """One answer, checked: a full page with no errors. Later answers must match its length."""
    response = await send(client, target, size, target.body(size), f"{CALLER_PREFIX}check")
    if response.headers.get("content-encoding", "identity") != "identity":
        print(f"  {target.name} answers {response.headers['content-encoding']}-encoded")
    if response.status_code != 200:
        raise SystemExit(f"{target.name}: HTTP {response.status_code}: {response.text[:500]}")
    document = response.json()
    items = target.items(document)
    if document.get("errors") or len(items) != size:
        raise SystemExit(f"{target.name}: not a {size}-item page: {response.text[:500]}")
    return response.content


async def send(
    client: httpx.AsyncClient, target: Target, size: int, content: bytes | None, caller: str
) -> httpx.Response:
    headers = {"Authorization": caller}
    if target.method == "GET":
        return await client.get(target.url, params={"max": size}, headers=headers)
    return await client.post(target.url, content=content, headers=headers)


async def load(
    client: httpx.AsyncClient,
    target: Target,
    size: int,
    expected_length: int,
    seconds: float,
    concurrency: int,
    callers: str,
) -> Measurement:
    """`concurrency` clients back to back for `seconds` (and at most MAX_REQUESTS)."""
    measurement = Measurement(target.name, size, callers, 0, 0.0)
    stop_at = time.monotonic() + seconds
    content = target.body(size)

    async def client_loop(index: int) -> None:
        caller = f"{CALLER_PREFIX}{0 if callers == SHARED else index}"
        while time.monotonic() < stop_at and measurement.requests < MAX_REQUESTS:
            started = time.perf_counter()
            try:
                response = await send(client, target, size, content, caller)
                ok = response.status_code == 200 and len(response.content) == expected_length
            except httpx.HTTPError:
                ok = False
            measurement.latencies.append(time.perf_counter() - started)
            measurement.requests += 1
            measurement.failures += not ok

    started = time.perf_counter()
    await asyncio.gather(*(client_loop(index) for index in range(concurrency)))
    measurement.seconds = time.perf_counter() - started
    return measurement


# wrk's script for one row: each of its threads is one load client with one connection, and
# sends its own token (or the shared one); every answer is checked (status and length) and the
# failures counted; `done` prints one line for `wrk_load` to read.
WRK_SCRIPT = """
local method, body, expected, prefix, shared = %(method)s, %(body)s, %(expected)d, %(prefix)s, %(shared)s
local threads, made = {}, 0

function setup(thread)
  thread:set("client", made)
  made = made + 1
  table.insert(threads, thread)
end

function init(args)
  failed = 0
  wrk.method = method
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept-Encoding"] = %(encoding)s
  wrk.headers["Authorization"] = prefix .. (shared and "0" or tostring(client))
end

function response(status, headers, answer)
  if status ~= 200 or #answer ~= expected then failed = failed + 1 end
end

function done(summary, latency, requests)
  local bad = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  for _, thread in ipairs(threads) do bad = bad + thread:get("failed") end
  io.write(string.format("peer-benchmark %%d %%d %%d %%f %%f\\n", summary.requests,
    bad, summary.duration, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def lua_string(text: str) -> str:
    """``text`` as a Lua long-bracket literal."""
    assert "]==]" not in text
    return f"[==[{text}]==]"


async def wrk_load(
    target: Target,
    size: int,
    expected_length: int,
    seconds: float,
    concurrency: int,
    callers: str,
    accept_encoding: str,
    scratch: Path,
) -> Measurement:
    """The same row as ``load``, from wrk: `concurrency` threads of one connection each."""
    body = target.body(size)
    script = scratch / "wrk-row.lua"
    script.write_text(
        WRK_SCRIPT
        % {
            "method": lua_string(target.method),
            "body": lua_string(body.decode()) if body is not None else "nil",
            "expected": expected_length,
            "prefix": lua_string(CALLER_PREFIX),
            "shared": "true" if callers == SHARED else "false",
            "encoding": lua_string(accept_encoding),
        }
    )
    url = str(httpx.URL(target.url, params={"max": size})) if target.method == "GET" else target.url
    process = await asyncio.create_subprocess_exec(
        "wrk",
        f"-t{concurrency}",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={REQUEST_TIMEOUT:.0f}s",
        "-s",
        str(script),
        url,
        stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await process.communicate()
    finally:
        if process.returncode is None:  # cancelled (Ctrl-C): stop it with us
            process.kill()
            await process.wait()
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("peer-benchmark "):
            requests, failed, micros, p50, p99 = line.split()[1:]
            return Measurement(
                target.name,
                size,
                callers,
                int(requests),
                int(micros) / 1e6,
                failures=int(failed),
                quantiles={50: float(p50), 99: float(p99)},
            )
    raise SystemExit(f"wrk gave no figures for {target.name}:\n{output.decode()[-2000:]}")


async def upstream_calls(client: httpx.AsyncClient, stats_url: str) -> int:
    served = (await client.get(stats_url)).json()
    return sum(int(n) for n in served.values())


def caller_modes(args: argparse.Namespace) -> tuple[str, ...]:
    if args.shared_caller or args.callers == "shared":
        return (SHARED,)
    return (SEPARATE,) if args.callers == "separate" else (SEPARATE, SHARED)


def load_generator(args: argparse.Namespace) -> str:
    """wrk when installed (or asked for), else this script's own httpx loop."""
    if args.load == "auto":
        return "wrk" if shutil.which("wrk") else "httpx"
    if args.load == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("--load wrk: wrk is not installed (Debian: apt-get install wrk)")
    return str(args.load)


async def measure_all(
    targets: list[Target], stats_url: str, args: argparse.Namespace, scratch: Path
) -> tuple[list[list[Measurement]], dict[int, float]]:
    """Every target at every page size with every caller mode, pass after pass (each pass's
    rows in a list), and numbers-gateway's sequential latency (one client, median ms) per
    size: the over-HTTP side of the phase breakdown. The rows of one size and caller mode
    run back to back, so a busy moment of the shared machine slows neighbours alike."""
    # Ctrl-C or SIGTERM while loading cancels this task: in-flight requests end at once, and
    # the CancelledError unwinds to the `finally` that stops the fleet.
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    concurrency, duration, warmup = args.concurrency, args.duration, args.warmup
    modes = caller_modes(args)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json", "Accept-Encoding": args.accept_encoding}
    passes: list[list[Measurement]] = []
    sequential: dict[int, float] = {}
    lengths: dict[tuple[str, int], int] = {}
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=REQUEST_TIMEOUT) as client:
        for size in PAGE_SIZES:  # every answer checked once, before any load
            pages: dict[str, list[Any]] = {}
            for target in targets:
                body = await reference_body(client, target, size)
                lengths[target.name, size] = len(body)
                if target.method == "POST":  # GraphQL answers: the same items, field for field
                    pages[target.name] = comparable(target.items(json.loads(body)))
            for name, items in pages.items():
                if items != pages[OURS]:  # e.g. a reader that drops an item
                    raise SystemExit(f"{name}'s {size}-item page differs from {OURS}'s")
        use_wrk = load_generator(args) == "wrk"

        async def row(
            target: Target, size: int, seconds: float, clients: int, callers: str
        ) -> Measurement:
            length = lengths[target.name, size]
            if use_wrk:
                return await wrk_load(
                    target, size, length, seconds, clients, callers, args.accept_encoding, scratch
                )
            return await load(client, target, size, length, seconds, clients, callers)

        for index in range(args.passes):
            rows: list[Measurement] = []
            for size in PAGE_SIZES:
                for callers in modes:
                    for target in targets:
                        if target.name == CEILING and callers != modes[0]:
                            continue  # the REST upstream does not read the token
                        label = f"  pass {index + 1}, {target.name}, {size} items, {callers}"
                        print(f"{label}: {warmup:g} s warm-up, {duration:g} s", flush=True)
                        await row(target, size, warmup, concurrency, callers)
                        before = await upstream_calls(client, stats_url)
                        result = await row(target, size, duration, concurrency, callers)
                        result.upstream_calls = await upstream_calls(client, stats_url) - before
                        rows.append(result)
                        if target.name == OURS and size not in sequential:
                            alone = await row(target, size, 2.0, 1, SHARED)
                            sequential[size] = alone.quantile_ms(50)
            passes.append(rows)
    return passes, sequential


# --- report ---------------------------------------------------------------------------------


def print_table(passes: list[list[Measurement]], args: argparse.Namespace) -> None:
    print()
    print(
        f"load from {load_generator(args)}, concurrency {args.concurrency}, {args.duration:g} s "
        f"per row after {args.warmup:g} s warm-up, {len(passes)} pass(es), caching off, "
        "Accept-Encoding: "
        f"{args.accept_encoding}, {os.cpu_count()} cores shared by the load generator, the "
        "servers and the upstream"
    )
    header = (
        f"{'server':<28}{'page':>6}  {'callers':<18}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'requests':>10}{'failed':>8}{'upstream/req':>14}"
    )
    print(header)
    print("-" * len(header))
    for index, rows in enumerate(passes):
        if len(passes) > 1:
            print(f"pass {index + 1}")
        for result in rows:
            per_request = result.upstream_calls / result.requests if result.requests else 0.0
            callers = "-" if result.target == CEILING else result.callers
            print(
                f"{result.target:<28}{result.page_size:>6}  {callers:<18}"
                f"{result.per_second:>9.1f}{result.quantile_ms(50):>9.1f}"
                f"{result.quantile_ms(99):>9.1f}{result.requests:>10}{result.failures:>8}"
                f"{per_request:>14.2f}"
            )


@dataclass(frozen=True, slots=True)
class Ratio:
    """One ratio: ours / a floor (or a peer), one (ours, floor) pair per pass, beside its
    target (None: no target, shown for reference)."""

    group: str  # the heading it is printed under
    label: str
    pairs: tuple[tuple[float, float], ...]
    target: float | None
    at_least: bool  # True: the ratio must reach the target; False: stay under it

    @property
    def values(self) -> list[float]:
        return [ours / floor if floor else float("inf") for ours, floor in self.pairs]

    @property
    def value(self) -> float:
        return statistics.median(self.values)

    @property
    def met(self) -> bool:
        if self.target is None:
            return True
        return self.value >= self.target if self.at_least else self.value <= self.target

    def verdict(self) -> str:
        if self.target is None:
            return "(no target)"
        if self.met:
            return "met"
        by = self.target / self.value if self.at_least else self.value / self.target
        return f"missed by {by:.2f}x"


def http_ratios(passes: list[list[Measurement]]) -> list[Ratio]:
    """Ours (1 and 2 workers) / each peer, per page size and caller mode, over the passes."""
    rates = [{(r.target, r.page_size, r.callers): r.per_second for r in rows} for rows in passes]
    first = passes[0]
    modes = list(dict.fromkeys(r.callers for r in first))
    names = list(dict.fromkeys(r.target for r in first))
    found: list[Ratio] = []
    for size in PAGE_SIZES:
        for callers in modes:
            for ours in (OURS, OURS_TWO):
                for peer in (TAILCALL, PROXY, HIVE):
                    if ours not in names or peer not in names:
                        continue
                    pairs = tuple(
                        (rate[ours, size, callers], rate[peer, size, callers])
                        for rate in rates
                        if (peer, size, callers) in rate
                    )
                    found.append(
                        Ratio(
                            f"{size:,} items uncached (req/s), {callers}",
                            f"{ours} / {peer}",
                            pairs,
                            TARGETS.get((size, peer, callers)),
                            True,
                        )
                    )
    return found


def print_ratios(found: list[Ratio], passes: int) -> None:
    print()
    spread = "  (range)" if passes > 1 else ""
    print(
        f"{'ratios from one run' + (', medians of the passes' if passes > 1 else ''):<62}"
        f"{'ours':>10}{'floor':>10}{'ratio':>8}{spread:<17}{'target':>9}  verdict"
    )
    group = None
    for ratio in found:
        if ratio.group != group:
            group = ratio.group
            print(group)
        sign = ">=" if ratio.at_least else "<="
        target = f"{sign:>4}{ratio.target:>4g}x" if ratio.target is not None else f"{'-':>9}"
        ours = statistics.median(o for o, _ in ratio.pairs)
        floor = statistics.median(f for _, f in ratio.pairs)
        values = ratio.values
        shown = f"  ({min(values):.2f}-{max(values):.2f}x)" if len(values) > 1 else ""
        print(
            f"  {ratio.label:<60}{ours:>10.1f}{floor:>10.1f}{ratio.value:>7.2f}x{shown:<17}"
            f"{target}  {ratio.verdict()}"
        )


def print_stream(
    figures: Sequence[Mapping[str, Mapping[str, float]]],
    before: Sequence[Mapping[str, Mapping[str, float]]],
    entries: int,
) -> bool:
    """The streamed inventory's figures (medians of the rounds) beside its targets, and beside
    the earlier tree's when measured; whether the targets are met."""

    def median_of(runs: Sequence[Mapping[str, Mapping[str, float]]], way: str, key: str) -> float:
        return statistics.median(run[way][key] for run in runs)

    rate = median_of(figures, "streamed", "items_per_second")
    growth = max(run["streamed"]["rss_mib"] for run in figures)
    met = growth <= STREAM_RSS_LIMIT_MIB
    verdict = "met" if met else f"missed by {growth / STREAM_RSS_LIMIT_MIB:.2f}x"
    print()
    print(
        f"{entries:,} items streamed in process (benchmarks/stream_inventory.py, edges @stream, "
        f"{len(figures)} round(s)):"
    )
    print(
        f"  {rate:,.0f} items/s (a cursor walk of 2,000-item pages: "
        f"{median_of(figures, 'paged', 'items_per_second'):,.0f} items/s)"
    )
    if before:
        ratios = [
            ours["streamed"]["items_per_second"] / theirs["streamed"]["items_per_second"]
            for ours, theirs in zip(figures, before, strict=True)
        ]
        ratio = statistics.median(ratios)
        speed_met = ratio >= STREAM_SPEED_TARGET
        met = met and speed_met
        print(
            f"  the tree before: {median_of(before, 'streamed', 'items_per_second'):,.0f} "
            f"items/s; ours / before {ratio:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x, "
            f"interleaved)   target >= {STREAM_SPEED_TARGET:g}x  "
            + ("met" if speed_met else f"missed by {STREAM_SPEED_TARGET / ratio:.2f}x")
        )
    else:
        print("  (--stream-before PATH measures the tree before issue 31 beside it: the 2x target)")
    print(
        f"  peak RSS growth over idle {growth:.1f} MiB (cursor walk "
        f"{max(run['paged']['rss_mib'] for run in figures):.1f} MiB)   "
        f"target <= {STREAM_RSS_LIMIT_MIB:g} MiB  {verdict}"
    )
    return met


# --- main -----------------------------------------------------------------------------------


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the `finally` that stops the fleet runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def gateway_env(env: Mapping[str, str], upstream_root: str, **settings: str) -> dict[str, str]:
    """A numbers-gateway's environment in front of the static upstream."""
    return {
        **env,
        "GATEWAY_UPSTREAM_URL": f"{upstream_root}/v1",
        "GATEWAY_LOG_LEVEL": "warning",
        **settings,
    }


def start_gateway(
    fleet: Fleet, name: str, log_name: str, env: Mapping[str, str], *flags: str
) -> Target:
    """A numbers-gateway served as `numbers-gateway serve` runs it, ready."""
    port = free_port()
    command = [numbers_gateway_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = fleet.start(log_name, [*command, *flags], env)
    wait_ready(fleet, log_name, process, f"http://127.0.0.1:{port}/readyz")
    return Target(
        name,
        f"http://127.0.0.1:{port}/graphql",
        "POST",
        graphql_body(OUR_QUERY),
        lambda document: list(document["data"]["phoneNumbers"]["nodes"]),
    )


def run(args: argparse.Namespace) -> None:
    needs_node = args.install_only or not (args.skip_hive and args.skip_tailcall)
    home = install_peer() if needs_node else None
    if args.install_only:
        print(f"peers installed in {home}: {pinned_versions()}")
        return
    if home is not None:
        print(f"peers: {pinned_versions()} (in {home})", flush=True)
    scratch = home or cache_root()
    scratch.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    fleet = Fleet(run_dir)
    try:
        env = base_env()
        upstream_port, proxy_port = free_port(), free_port()
        upstream_root = f"http://127.0.0.1:{upstream_port}"
        upstream = fleet.start(
            "static-upstream",
            [sys.executable, str(STATIC_UPSTREAM), "--port", str(upstream_port)],
            env,
        )
        wait_ready(fleet, "static-upstream", upstream, f"{upstream_root}/healthz")
        uncached = gateway_env(env, upstream_root, GATEWAY_CACHE_TTL="0")
        targets = [
            Target(
                CEILING,
                f"{upstream_root}/v1/telephony/config/numbers",
                "GET",
                lambda size: None,
                lambda document: list(document["phoneNumbers"]),
            ),
            start_gateway(fleet, OURS, "numbers-gateway", uncached),
        ]
        if not args.skip_two_workers:
            targets.append(
                start_gateway(
                    fleet, OURS_TWO, "numbers-gateway-2-workers", uncached, "--workers", "2"
                )
            )
        proxy = fleet.start(
            PROXY,
            [
                sys.executable,
                str(HAND_PROXY),
                "--port",
                str(proxy_port),
                "--upstream",
                f"{upstream_root}/v1",
            ],
            env,
        )
        wait_ready(fleet, PROXY, proxy, f"http://127.0.0.1:{proxy_port}/healthz")
        targets.append(
            Target(
                PROXY,
                f"http://127.0.0.1:{proxy_port}/graphql",
                "POST",
                graphql_body(OUR_QUERY),
                lambda document: list(document["data"]["phoneNumbers"]["nodes"]),
            )
        )
        if home is not None and not args.skip_tailcall:
            targets.append(start_tailcall(fleet, home, run_dir, upstream_root, env))
        if home is not None and not args.skip_hive:
            targets.append(start_hive(fleet, home, run_dir, upstream_root, env))
        if args.skip_floor:
            targets = targets[1:]
        passes, sequential = asyncio.run(
            measure_all(targets, f"{upstream_root}/_stats", args, run_dir)
        )
        print_table(passes, args)
        found = http_ratios(passes)
        if not args.skip_repeat:
            found += measure_repeat(fleet, upstream_root, env, args)
        fleet.stop_all()  # the in-process figures are taken on a quiet machine
        print("  in process: the 2,000-item page by phase", flush=True)
        in_process = asyncio.run(phases.measure(2000, args.rounds))
        found.append(
            Ratio(
                "in process, 2,000 items (ms)",
                "numbers-gateway / orjson.loads + dumps of the upstream body",
                ((in_process["execute"], in_process["floor"]),),
                IN_PROCESS_TARGET,
                False,
            )
        )
        stream_met = True
        stream_figures: list[dict[str, dict[str, float]]] = []
        before_figures: list[dict[str, dict[str, float]]] = []
        if not args.skip_stream:
            for _ in range(args.passes if args.stream_before else 1):
                if args.stream_before:
                    before_figures.append(measure_stream(args.stream_entries, args.stream_before))
                stream_figures.append(measure_stream(args.stream_entries))
        print_ratios(found, args.passes)
        if stream_figures:
            stream_met = print_stream(stream_figures, before_figures, args.stream_entries)
        if not all(ratio.met for ratio in found) or not stream_met:
            print_breakdowns(sequential, in_process, args)
    finally:
        fleet.stop_all()
        if args.keep_logs:
            print(f"logs and configs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def start_tailcall(
    fleet: Fleet, home: Path, run_dir: Path, upstream_root: str, env: Mapping[str, str]
) -> Target:
    """Tailcall serving `benchmarks/peer/tailcall.graphql`, its port from a second config file
    of this run (Tailcall merges the files it is given), ready."""
    binary = tailcall_binary(home)
    port = free_port()
    listen = run_dir / "tailcall-port.graphql"
    listen.write_text(f"schema @server(port: {port}) {{\n  query: Query\n}}\n")
    tailcall_env = {
        **env,
        "PEER_UPSTREAM_URL": f"{upstream_root}/v1",
        "TAILCALL_LOG_LEVEL": "error",
        "TC_TRACKER": "false",  # no usage telemetry
    }
    process = fleet.start(
        TAILCALL, [str(binary), "start", str(TAILCALL_CONFIG), str(listen)], tailcall_env, run_dir
    )
    wait_ready(fleet, TAILCALL, process, f"http://127.0.0.1:{port}/status")
    return Target(
        TAILCALL,
        f"http://127.0.0.1:{port}/graphql",
        "POST",
        graphql_body(TAILCALL_QUERY),
        lambda document: list(document["data"]["listPhoneNumbers"]["phoneNumbers"]),
    )


def start_hive(
    fleet: Fleet, home: Path, run_dir: Path, upstream_root: str, env: Mapping[str, str]
) -> Target:
    """Hive Gateway over a supergraph composed from schema/openapi.yaml, ready."""
    supergraph = run_dir / "supergraph.graphql"
    compose_supergraph(home, f"{upstream_root}/v1", supergraph)
    hive_port = free_port()
    hive_command = [
        str(home / "node_modules" / ".bin" / "hive-gateway"),
        "supergraph",
        str(supergraph),
        "--host",
        "127.0.0.1",
        "--port",
        str(hive_port),
        "--fork",
        "1",
    ]
    # Run from the run folder: started in the cache folder, Hive would load mesh.config.ts
    # as its own config. NODE_ENV=production is how Node services are deployed (graphql-js
    # skips its development-only checks).
    hive = fleet.start(HIVE, hive_command, {**env, "NODE_ENV": "production"}, run_dir)
    wait_ready(fleet, HIVE, hive, f"http://127.0.0.1:{hive_port}/readiness")
    return Target(
        HIVE,
        f"http://127.0.0.1:{hive_port}/graphql",
        "POST",
        graphql_body(HIVE_QUERY),
        lambda document: list(document["data"]["listPhoneNumbers"]["phoneNumbers"]),
    )


def measure_repeat(
    fleet: Fleet, upstream_root: str, env: Mapping[str, str], args: argparse.Namespace
) -> list[Ratio]:
    """A repeated 50-item query, as a POST and as a GET, req/s: a numbers-gateway with caching
    on (its stored answer served again) against bare Starlette returning the same bytes, the
    load from ``repeat_query``, interleaved pass by pass."""
    cached_env = gateway_env(env, upstream_root, GATEWAY_MAX_IN_FLIGHT="100000")
    cached = start_gateway(
        fleet, "numbers-gateway, caching on", "numbers-gateway-cached", cached_env
    )
    post_url = cached.url
    post_body = orjson.dumps({"query": OUR_QUERY, "variables": {"size": 50}})
    get_url = str(
        httpx.URL(
            post_url, params={"query": OUR_QUERY, "variables": orjson.dumps({"size": 50}).decode()}
        )
    )
    answer = httpx.get(get_url, headers=repeat_query.HEADERS, timeout=30)
    if answer.status_code != 200 or b'"errors"' in answer.content:
        raise SystemExit(f"the cached gateway: HTTP {answer.status_code}: {answer.text[:300]}")
    posted = httpx.post(post_url, content=post_body, headers=repeat_query.POST_HEADERS, timeout=30)
    if posted.content != answer.content:
        raise SystemExit(f"the cached gateway's POST answer differs: {posted.text[:300]}")
    body_file = fleet.log_dir / "answer.json"
    body_file.write_bytes(answer.content)
    bare_port = free_port()
    bare = fleet.start(
        "bare-starlette",
        [sys.executable, "-c", repeat_query.BARE_APP, str(bare_port), str(body_file)],
        env,
    )
    bare_url = f"http://127.0.0.1:{bare_port}/graphql"
    wait_ready(fleet, "bare-starlette", bare, bare_url)
    loader = "wrk" if shutil.which("wrk") else "httpx (install wrk: the ratio is flattered)"
    seconds, connections = max(1, round(args.duration)), args.concurrency * 2
    pairs: dict[str, list[tuple[float, float]]] = {"POST": [], "GET": []}
    for index in range(args.passes):
        for method, (url, content) in (
            ("POST", (post_url, post_body)),
            ("GET", (get_url, None)),
        ):
            print(
                f"  pass {index + 1}, repeated 50-item {method}, {loader}: {seconds} s each",
                flush=True,
            )
            ours = repeat_query.measure(url, seconds, connections, content)
            floor = repeat_query.measure(bare_url, seconds, connections, content)
            pairs[method].append((ours, floor))
    return [
        Ratio(
            "a repeated 50-item query, caching on (req/s)",
            f"{method}: numbers-gateway / bare Starlette returning the bytes",
            tuple(found),
            REPEAT_TARGET,
            True,
        )
        for method, found in pairs.items()
    ]


def measure_stream(entries: int, tree: Path | None = None) -> dict[str, dict[str, float]]:
    """``stream_inventory.py`` in a process of its own (its RSS is what is measured); with
    ``tree``, that source tree's script over that tree's package."""
    env = base_env()
    script = STREAM_INVENTORY
    if tree is not None:
        script = tree / "benchmarks" / "stream_inventory.py"
        env["PYTHONPATH"] = str(tree)  # ahead of the editable install's finder
    print(f"  in process: {entries:,} items streamed ({tree or 'this tree'})", flush=True)
    done = subprocess.run(
        [sys.executable, str(script), str(entries), "--json"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"stream_inventory.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
    figures: dict[str, dict[str, float]] = json.loads(done.stdout.splitlines()[-1])
    return figures


def print_breakdowns(
    sequential: dict[int, float], in_process: dict[str, float], args: argparse.Namespace
) -> None:
    """Where one request's time goes, for the targets missed: the 2,000-item page measured
    already; the 50-item one now."""
    print()
    print("where the time goes (benchmarks/phases.py; medians, in process unless said):")
    phases.print_breakdown(2000, in_process, sequential.get(2000))
    if 50 in sequential:
        small = asyncio.run(phases.measure(50, args.rounds * 3))
        phases.print_breakdown(50, small, sequential[50])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per row")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument(
        "--passes", type=int, default=1, help="sweeps of every row, interleaved (default 1)"
    )
    parser.add_argument(
        "--callers",
        choices=["both", "separate", "shared"],
        default="both",
        help="a token per load client, one shared token, or both (default)",
    )
    parser.add_argument("--shared-caller", action="store_true", help="the same as --callers shared")
    parser.add_argument(
        "--load",
        choices=["auto", "wrk", "httpx"],
        default="auto",
        help="the load generator of the uncached rows: wrk (auto: when installed; much "
        "lighter, so a fast server is not capped by the generator) or an httpx loop",
    )
    parser.add_argument("--install-only", action="store_true", help="install the peers and stop")
    parser.add_argument(
        "--skip-floor",
        action="store_true",
        help="do not measure the static upstream alone (the ceiling)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the run folder")
    parser.add_argument("--skip-hive", action="store_true", help="no Hive Gateway")
    parser.add_argument("--skip-tailcall", action="store_true", help="no Tailcall")
    parser.add_argument(
        "--skip-two-workers", action="store_true", help="numbers-gateway in one process only"
    )
    parser.add_argument(
        "--skip-repeat", action="store_true", help="do not measure the repeated query"
    )
    parser.add_argument(
        "--skip-stream", action="store_true", help="do not measure the streamed inventory"
    )
    parser.add_argument(
        "--stream-entries", type=int, default=100_000, help="entries the streamed inventory has"
    )
    parser.add_argument(
        "--stream-before",
        type=Path,
        help="a source tree from before issue 31 (a git worktree) whose stream_inventory.py "
        "runs in turn with ours, once per pass: the streaming target's 2x",
    )
    parser.add_argument(
        "--accept-encoding",
        default="identity",
        help="the Accept-Encoding every server is asked with (default: identity)",
    )
    parser.add_argument(
        "--rounds", type=int, default=30, help="interleaved rounds of the in-process figures"
    )
    args = parser.parse_args()
    if not 0 < args.duration <= 300 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be in (0, 300] and --warmup in [0, 60]")
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be in 1..64")
    if not 1 <= args.passes <= 20:
        parser.error("--passes must be in 1..20")
    if not 1_000 <= args.stream_entries <= 1_000_000:
        parser.error("--stream-entries must be in 1,000..1,000,000")
    with stop_on_sigterm():
        try:
            run(args)
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted: every process this run started has been stopped", file=sys.stderr)
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()
