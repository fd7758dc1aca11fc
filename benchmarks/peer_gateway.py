"""Peer benchmark: numbers-gateway against Hive Gateway and a hand-written proxy over one static
upstream, every ratio of issue 22 printed side by side from one run (run by hand).

Over HTTP, caching off, each server in front of the same static upstream
(`benchmarks/static_upstream.py`: fixed bytes, a 50-item or a 2,000-item page), each asked
for every PhoneNumber field. The peer is Hive Gateway serving a supergraph that GraphQL Mesh
composes from `schema/openapi.yaml` (`benchmarks/peer/`); the floor is
`benchmarks/hand_proxy.py` (Starlette + httpx + orjson, a dict projection of the same fields,
no GraphQL), whose items must equal ours field for field. The static upstream alone is
measured too, as the ceiling of what this load generator and upstream can do on the same
cores. Each load client sends its own token, so numbers-gateway's single flight (which stays
on with caching off) cannot merge the clients' asks into one upstream call; `--shared-caller`
lets it. Every server is asked with the same `Accept-Encoding` (`identity` unless
`--accept-encoding`): compressing a megabyte is its own cost, and not every server pays it.

Then, in the same run: a repeated 50-item query to a second numbers-gateway with caching on
against bare Starlette returning the same bytes (`benchmarks/repeat_query.py`'s load: wrk
when installed), and the in-process 2,000-item page against `orjson.loads` + `dumps` of the
upstream body (`benchmarks/phases.py`). The ratios and their targets (issue 22):

    2,000 items uncached   >= 0.8x the hand-written proxy (and >= 5x Hive)
    50 items uncached      >= 1.2x the hand-written proxy
    a repeated 50-item query >= 0.5x bare Starlette
    in process, 2,000 items <= 3x the orjson round trip

Where one is missed, one request's time by phase follows (`benchmarks/phases.py`: read,
decode, project, encode, GraphQL overhead, middleware in process; the server's share is a
sequential HTTP request's latency less the in-process app).

The npm packages (exact versions in `benchmarks/peer/package-lock.json`) are installed with
`npm ci` into `${XDG_CACHE_HOME:-~/.cache}/numbers-gateway/peer-<sha16 of the lock>/`, never
into the repo. Every process it starts listens on 127.0.0.1, and every one is stopped on the
way out (error and Ctrl-C included). Load loops are bounded in time and in requests.

    .venv/bin/python benchmarks/peer_gateway.py [--duration 10] [--concurrency 4] [--warmup 3]
    .venv/bin/python benchmarks/peer_gateway.py --skip-hive   # without node: proxy ratios only
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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import orjson
import phases
import repeat_query

REPO = Path(__file__).resolve().parents[1]
PEER_SOURCES = REPO / "benchmarks" / "peer"
PEER_FILES = ("package.json", "package-lock.json", "mesh.config.ts")
OPENAPI = REPO / "schema" / "openapi.yaml"
STATIC_UPSTREAM = REPO / "benchmarks" / "static_upstream.py"
HAND_PROXY = REPO / "benchmarks" / "hand_proxy.py"
OURS, PROXY, HIVE = "numbers-gateway", "hand-written proxy", "hive-gateway"
# The static upstream wants a bearer token and checks nothing else. Each load client is its
# own caller unless --shared-caller: numbers-gateway's single flight (on even with caching
# off) merges identical concurrent asks of one caller, which Hive does not do.
CALLER_PREFIX = "Bearer peer-benchmark-"
PAGE_SIZES = (2000, 50)
TARGETS = {2000: 5.0, 50: 2.0}  # ours / Hive, requests per second
PROXY_TARGETS = {2000: 0.8, 50: 1.2}  # ours / the hand-written proxy
REPEAT_TARGET = 0.5  # a repeated 50-item query, ours (caching on) / bare Starlette
IN_PROCESS_TARGET = 3.0  # the 2,000-item page in process / orjson.loads + dumps
MAX_REQUESTS = 200_000  # per measurement, on top of the time bound
REQUEST_TIMEOUT = 60.0
START_TIMEOUT = 90.0

# The same selection for both: every PhoneNumber field, nested objects included.
PHONE_NUMBER_FIELDS = """
  phoneNumber extension routingPrefix esn state phoneNumberType mainNumber
  includedTelephonyTypes mobileNetwork routingProfile tollFreeNumber isServiceNumber
  isReservedNumber location { id name } owner { id type firstName lastName }
"""
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
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    upstream_calls: int = 0

    @property
    def per_second(self) -> float:
        """Successful answers per second: a failed request counts for nothing."""
        return (self.requests - self.failures) / self.seconds if self.seconds else 0.0

    def quantile_ms(self, q: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000


# --- installing the peer --------------------------------------------------------------------


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
    print(f"installing the peer into {home} (npm ci) ...", flush=True)
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


def pinned_versions() -> str:
    dependencies = json.loads((PEER_SOURCES / "package.json").read_text())["dependencies"]
    return ", ".join(f"{name} {version}" for name, version in dependencies.items())


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
    shared_caller: bool,
) -> Measurement:
    """`concurrency` clients back to back for `seconds` (and at most MAX_REQUESTS)."""
    measurement = Measurement(target.name, size, 0, 0.0)
    stop_at = time.monotonic() + seconds
    content = target.body(size)

    async def client_loop(index: int) -> None:
        caller = f"{CALLER_PREFIX}{0 if shared_caller else index}"
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


async def upstream_calls(client: httpx.AsyncClient, stats_url: str) -> int:
    served = (await client.get(stats_url)).json()
    return sum(int(n) for n in served.values())


async def measure_all(
    targets: list[Target], stats_url: str, args: argparse.Namespace
) -> tuple[list[Measurement], dict[int, float]]:
    """Every target at every page size, and numbers-gateway's sequential latency (one client,
    median ms) per size: the over-HTTP side of the phase breakdown."""
    # Ctrl-C or SIGTERM while loading cancels this task: in-flight requests end at once, and
    # the CancelledError unwinds to the `finally` that stops the fleet.
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    concurrency, duration, warmup = args.concurrency, args.duration, args.warmup
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json", "Accept-Encoding": args.accept_encoding}
    results: list[Measurement] = []
    sequential: dict[int, float] = {}
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=REQUEST_TIMEOUT) as client:
        for size in PAGE_SIZES:
            pages: dict[str, list[Any]] = {}
            for target in targets:
                body = await reference_body(client, target, size)
                if target.method == "POST":  # GraphQL answers: the same items, field for field
                    pages[target.name] = target.items(json.loads(body))
                print(f"  {target.name}, {size} items: warming up {warmup:g} s", flush=True)
                await load(client, target, size, len(body), warmup, concurrency, args.shared_caller)
                before = await upstream_calls(client, stats_url)
                print(f"  {target.name}, {size} items: measuring {duration:g} s", flush=True)
                result = await load(
                    client, target, size, len(body), duration, concurrency, args.shared_caller
                )
                result.upstream_calls = await upstream_calls(client, stats_url) - before
                results.append(result)
                if target.name == OURS:
                    alone = await load(client, target, size, len(body), 2.0, 1, True)
                    sequential[size] = alone.quantile_ms(50)
            first, *others = pages.values()
            if any(other != first for other in others):  # e.g. a reader that drops an item
                raise SystemExit(f"the gateways' {size}-item pages differ: not the same work")
    return results, sequential


# --- report ---------------------------------------------------------------------------------


def print_table(results: list[Measurement], args: argparse.Namespace) -> None:
    callers = "one caller" if args.shared_caller else f"{args.concurrency} callers (tokens)"
    print()
    print(
        f"concurrency {args.concurrency}, {callers}, {args.duration:g} s per row after "
        f"{args.warmup:g} s warm-up, caching off, Accept-Encoding: {args.accept_encoding}, "
        f"{os.cpu_count()} cores shared by the load generator, the servers and the upstream"
    )
    header = (
        f"{'server':<24}{'page':>6}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'requests':>10}{'failed':>8}{'upstream/req':>14}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        per_request = result.upstream_calls / result.requests if result.requests else 0.0
        print(
            f"{result.target:<24}{result.page_size:>6}{result.per_second:>10.1f}"
            f"{result.quantile_ms(50):>10.1f}{result.quantile_ms(99):>10.1f}"
            f"{result.requests:>10}{result.failures:>8}{per_request:>14.2f}"
        )


@dataclass(frozen=True, slots=True)
class Ratio:
    """One of issue 22's ratios: ours / a floor (or a peer), beside its target."""

    label: str
    ours: float
    floor: float
    target: float
    at_least: bool  # True: the ratio must reach the target; False: stay under it
    unit: str

    @property
    def value(self) -> float:
        return self.ours / self.floor if self.floor else float("inf")

    @property
    def met(self) -> bool:
        return self.value >= self.target if self.at_least else self.value <= self.target

    def verdict(self) -> str:
        if self.met:
            return "met"
        by = self.target / self.value if self.at_least else self.value / self.target
        return f"missed by {by:.2f}x"


def ratios(
    results: list[Measurement], repeat: tuple[float, float] | None, in_process: dict[str, float]
) -> list[Ratio]:
    by_key = {(r.target, r.page_size): r.per_second for r in results}
    found: list[Ratio] = []
    for size in PAGE_SIZES:
        ours = by_key.get((OURS, size), 0.0)
        if (PROXY, size) in by_key:
            found.append(
                Ratio(
                    f"{size:,} items uncached: ours / hand-written proxy",
                    ours,
                    by_key[PROXY, size],
                    PROXY_TARGETS[size],
                    True,
                    "req/s",
                )
            )
        if (HIVE, size) in by_key:
            found.append(
                Ratio(
                    f"{size:,} items uncached: ours / Hive Gateway",
                    ours,
                    by_key[HIVE, size],
                    TARGETS[size],
                    True,
                    "req/s",
                )
            )
    if repeat is not None:
        found.append(
            Ratio("50 items repeated: ours / bare Starlette", *repeat, REPEAT_TARGET, True, "req/s")
        )
    if in_process:
        found.append(
            Ratio(
                "2,000 items in process: ours / orjson loads+dumps",
                in_process["execute"],
                in_process["floor"],
                IN_PROCESS_TARGET,
                False,
                "ms",
            )
        )
    return found


def print_ratios(found: list[Ratio]) -> None:
    print()
    print(f"{'ratio (one run)':<52}{'ours':>10}{'floor':>10}{'ratio':>8}{'target':>9}  verdict")
    for ratio in found:
        sign = ">=" if ratio.at_least else "<="
        print(
            f"{ratio.label:<52}{ratio.ours:>10.1f}{ratio.floor:>10.1f}{ratio.value:>7.2f}x"
            f"{sign:>4}{ratio.target:>4g}x  {ratio.verdict()} ({ratio.unit})"
        )


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


def run(args: argparse.Namespace) -> None:
    home = None if args.skip_hive and not args.install_only else install_peer()
    if args.install_only:
        print(f"peer installed in {home}: {pinned_versions()}")
        return
    if home is not None:
        print(f"peer: {pinned_versions()} (in {home})", flush=True)
    scratch = home or cache_root()
    scratch.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    fleet = Fleet(run_dir)
    try:
        env = base_env()
        upstream_port, ours_port, proxy_port = free_port(), free_port(), free_port()
        upstream_root = f"http://127.0.0.1:{upstream_port}"
        upstream = fleet.start(
            "static-upstream",
            [sys.executable, str(STATIC_UPSTREAM), "--port", str(upstream_port)],
            env,
        )
        ours_env = {
            **env,
            "GATEWAY_UPSTREAM_URL": f"{upstream_root}/v1",
            "GATEWAY_CACHE_TTL": "0",
            "GATEWAY_LOG_LEVEL": "warning",
        }
        ours = fleet.start(
            OURS,
            [numbers_gateway_command(), "serve", "--host", "127.0.0.1", "--port", str(ours_port)],
            ours_env,
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
        wait_ready(fleet, "static-upstream", upstream, f"{upstream_root}/healthz")
        wait_ready(fleet, OURS, ours, f"http://127.0.0.1:{ours_port}/readyz")
        wait_ready(fleet, PROXY, proxy, f"http://127.0.0.1:{proxy_port}/healthz")
        targets = [
            Target(
                "static upstream (REST)",
                f"{upstream_root}/v1/telephony/config/numbers",
                "GET",
                lambda size: None,
                lambda document: list(document["phoneNumbers"]),
            ),
            Target(
                OURS,
                f"http://127.0.0.1:{ours_port}/graphql",
                "POST",
                graphql_body(OUR_QUERY),
                lambda document: list(document["data"]["phoneNumbers"]["nodes"]),
            ),
            Target(
                PROXY,
                f"http://127.0.0.1:{proxy_port}/graphql",
                "POST",
                graphql_body(OUR_QUERY),
                lambda document: list(document["data"]["phoneNumbers"]["nodes"]),
            ),
        ]
        if home is not None:
            targets.append(start_hive(fleet, home, run_dir, upstream_root, env))
        if args.skip_floor:
            targets = targets[1:]
        results, sequential = asyncio.run(measure_all(targets, f"{upstream_root}/_stats", args))
        print_table(results, args)
        repeat = None if args.skip_repeat else measure_repeat(fleet, upstream_root, env, args)
        fleet.stop_all()  # the in-process figures are taken on a quiet machine
        print("  in process: the 2,000-item page by phase", flush=True)
        in_process = asyncio.run(phases.measure(2000, args.rounds))
        found = ratios(results, repeat, in_process)
        print_ratios(found)
        if not all(ratio.met for ratio in found):
            print_breakdowns(results, sequential, in_process, args)
    finally:
        fleet.stop_all()
        if args.keep_logs:
            print(f"logs and supergraph kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


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
) -> tuple[float, float]:
    """A repeated 50-item query, req/s: a numbers-gateway with caching on (its answer reused)
    against bare Starlette returning the same bytes, the load from ``repeat_query``."""
    cached_port, bare_port = free_port(), free_port()
    cached = fleet.start(
        "numbers-gateway-cached",
        [numbers_gateway_command(), "serve", "--host", "127.0.0.1", "--port", str(cached_port)],
        {
            **env,
            "GATEWAY_UPSTREAM_URL": f"{upstream_root}/v1",
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_MAX_IN_FLIGHT": "100000",
        },
    )
    wait_ready(fleet, "numbers-gateway-cached", cached, f"http://127.0.0.1:{cached_port}/readyz")
    url = str(
        httpx.URL(
            f"http://127.0.0.1:{cached_port}/graphql",
            params={"query": OUR_QUERY, "variables": orjson.dumps({"size": 50}).decode()},
        )
    )
    answer = httpx.get(url, headers=repeat_query.HEADERS, timeout=30)
    if answer.status_code != 200 or b'"errors"' in answer.content:
        raise SystemExit(f"the cached gateway: HTTP {answer.status_code}: {answer.text[:300]}")
    body_file = fleet.log_dir / "answer.json"
    body_file.write_bytes(answer.content)
    bare = fleet.start(
        "bare-starlette",
        [sys.executable, "-c", repeat_query.BARE_APP, str(bare_port), str(body_file)],
        env,
    )
    bare_url = f"http://127.0.0.1:{bare_port}/graphql"
    wait_ready(fleet, "bare-starlette", bare, bare_url)
    loader = "wrk" if shutil.which("wrk") else "httpx (install wrk: the ratio is flattered)"
    print(f"  repeated 50-item query, {loader}: measuring {args.duration:g} s each", flush=True)
    ours = repeat_query.measure(url, int(args.duration), args.concurrency * 2)
    floor = repeat_query.measure(bare_url, int(args.duration), args.concurrency * 2)
    return ours, floor


def print_breakdowns(
    results: list[Measurement],
    sequential: dict[int, float],
    in_process: dict[str, float],
    args: argparse.Namespace,
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
    parser.add_argument("--install-only", action="store_true", help="install the peer and stop")
    parser.add_argument(
        "--skip-floor",
        action="store_true",
        help="do not measure the static upstream alone (the ceiling)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the run folder")
    parser.add_argument("--skip-hive", action="store_true", help="no Hive Gateway (no node)")
    parser.add_argument(
        "--skip-repeat", action="store_true", help="do not measure the repeated query"
    )
    parser.add_argument(
        "--accept-encoding",
        default="identity",
        help="the Accept-Encoding every server is asked with (default: identity)",
    )
    parser.add_argument(
        "--rounds", type=int, default=30, help="interleaved rounds of the in-process figures"
    )
    parser.add_argument(
        "--shared-caller",
        action="store_true",
        help="one token for every load client (lets single flight merge concurrent asks)",
    )
    args = parser.parse_args()
    if not 0 < args.duration <= 300 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be in (0, 300] and --warmup in [0, 60]")
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be in 1..64")
    with stop_on_sigterm():
        try:
            run(args)
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted: every process this run started has been stopped", file=sys.stderr)
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()
