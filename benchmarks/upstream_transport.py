"""The upstream exchange: httpx's wire transports side by side, under the gateway's own client.

Issue 31 (deliverable 3) asks whether another transport under the same ``httpx.AsyncClient``
makes the upstream exchange cheaper. The candidates are each a wire under the resilient
transport, as ``gateway.upstream.factory.build_upstream`` puts one there:

    httpx              httpx's own transport (httpcore over anyio, h11) with the pool the
                       gateway gave it until issue 31 (2 x the slots, the slots kept alive)
    httpx, tuned       the same with ``http2=False`` stated, no transport retries, every
                       connection kept alive (``max_keepalive_connections`` equal to the pool)
                       for 60 s instead of 5
    httpx-aiohttp      ``httpx_aiohttp.AiohttpTransport`` (httpx's API over aiohttp's C HTTP
                       parser), its session without a cookie jar (aiohttp's default one would
                       keep a cookie one caller's answer set and send it for every caller);
                       only when the package is installed (``pip install httpx-aiohttp``: it
                       is not a dependency, see ``gateway/upstream/wire.py`` for why)
    aiohttp wire       ``factory.network_transport``: the gateway's own wire over aiohttp
                       (``gateway.upstream.wire.AiohttpWire``), what ``serve`` uses

in front of the static upstream (``benchmarks/static_upstream.py``, its own process, a real
socket), uncached 50- and 2,000-item pages of every PhoneNumber field:

- **in process**: the exchange alone (``UpstreamClient``'s client GETs the page and reads it:
  one request at a time, and four callers at once) and the whole app (``create_app`` with the
  candidate as its wire, a request through ASGI), interleaved round by round on uvloop (what
  ``serve`` runs on), ``--batch`` calls a round; the medians of this process's CPU time per
  call (what the transport costs the gateway: the upstream's own work is in its process, and
  a shared machine disturbs CPU time least) and of the wall time per call;
- **over HTTP**: ``numbers-gateway serve`` with each candidate (this script, ``--serve NAME``,
  replaces ``factory.network_transport`` and runs the CLI; the server's log names the wire it
  built, which is checked), loaded as ``peer_gateway.py`` loads it (wrk when installed; four
  clients, a token each), candidates interleaved pass by pass; req/s and ratios to httpx's
  own transport.

Run by hand (the machine's cores are shared: only ratios from one run mean anything)::

    .venv/bin/python benchmarks/upstream_transport.py [--duration 5] [--passes 2] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import peer_gateway
import structlog
import uvloop
from asgi_lifespan import LifespanManager
from large_page import FIELDS
from peer_gateway import SEPARATE

from gateway.clock import SYSTEM_CLOCK
from gateway.observability.tracing import Tracing
from gateway.server.app import create_app
from gateway.server.cli import settle_heap
from gateway.settings import Settings, load_settings
from gateway.upstream import factory

REPO = Path(__file__).resolve().parents[1]
STATIC_UPSTREAM = REPO / "benchmarks" / "static_upstream.py"
NUMBERS = "/telephony/config/numbers"
SIZES = (2000, 50)
HTTPX, TUNED, AIOHTTP, WIRE = "httpx", "httpx, tuned", "httpx-aiohttp", "aiohttp wire"
# What a served gateway prints once it has built its wire (checked by the over-HTTP part).
WIRE_MARK = "benchmark wire transport:"
CALLER_PREFIX = "Bearer transport-benchmark-"

Wire = Callable[[Settings, str], httpx.AsyncBaseTransport]


def httpx_own(settings: Settings, base_url: str) -> httpx.AsyncHTTPTransport:
    """httpx's own transport as the gateway had it before issue 31."""
    return httpx.AsyncHTTPTransport(
        limits=httpx.Limits(
            max_connections=settings.upstream_concurrency * 2,
            max_keepalive_connections=settings.upstream_concurrency,
        ),
        proxy=factory.environment_proxy(httpx.URL(base_url)),
    )


def httpx_tuned(settings: Settings, base_url: str) -> httpx.AsyncHTTPTransport:
    """httpx's own transport with every pooled connection kept alive, longer."""
    pool = settings.upstream_concurrency * 2
    return httpx.AsyncHTTPTransport(
        http1=True,
        http2=False,
        retries=0,
        limits=httpx.Limits(
            max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=60.0
        ),
        proxy=factory.environment_proxy(httpx.URL(base_url)),
    )


def httpx_aiohttp(settings: Settings, base_url: str) -> httpx.AsyncBaseTransport:
    """``httpx_aiohttp.AiohttpTransport`` over a session that keeps no cookie."""
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    pool = settings.upstream_concurrency * 2
    proxy = factory.environment_proxy(httpx.URL(base_url))

    def session() -> aiohttp.ClientSession:
        # Made on first use, inside the running loop, as aiohttp wants.
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool, keepalive_timeout=60.0),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    return AiohttpTransport(
        limits=httpx.Limits(max_connections=pool),
        proxy=httpx.Proxy(proxy) if proxy else None,
        client=session,
    )


def _has_httpx_aiohttp() -> bool:
    try:
        import httpx_aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


WIRES: dict[str, Wire] = {
    HTTPX: httpx_own,
    TUNED: httpx_tuned,
    **({AIOHTTP: httpx_aiohttp} if _has_httpx_aiohttp() else {}),
    WIRE: factory.network_transport,
}
CANDIDATES = tuple(WIRES)


def graphql_query(size: int) -> bytes:
    document = f"{{ phoneNumbers(page: {{first: {size}}}) {{ nodes {{ {FIELDS} }} }} }}"
    return orjson.dumps({"query": document})


# --- in process -----------------------------------------------------------------------------


Timings = dict[tuple[str, str, int], tuple[float, float]]


async def in_process(upstream_url: str, rounds: int, batch: int) -> Timings:
    """(CPU ms, wall ms) per call of each (measure, candidate, size): medians of the rounds
    of one interleaved group."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    settings = load_settings(upstream_url=upstream_url, cache_ttl=0)
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    runs: dict[tuple[str, str, int], Callable[[], Any]] = {}
    async with AsyncExitStack() as stack:
        for name, wire in WIRES.items():
            upstream = factory.build_upstream(
                settings,
                base_url=upstream_url,
                transport=wire(settings, upstream_url),
                metrics=None,
                clock=SYSTEM_CLOCK,
                tracing=Tracing(),
            )
            http = await stack.enter_async_context(upstream.http)
            app = create_app(settings, upstream_transport=wire(settings, upstream_url))
            manager = await stack.enter_async_context(LifespanManager(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=manager.app), base_url="http://gateway.test"
                )
            )
            for size in SIZES:
                runs["exchange", name, size] = _exchange(http, upstream_url, size, 1)
                runs["exchange x4", name, size] = _exchange(http, upstream_url, size, 4)
                runs["app", name, size] = _app(client, headers, size)
        for run in runs.values():  # every candidate answers before anything is timed
            for _ in range(3):
                await run()
        settle_heap()  # as `numbers-gateway serve` does once the app is built
        cpu: dict[tuple[str, str, int], list[float]] = {key: [] for key in runs}
        wall: dict[tuple[str, str, int], list[float]] = {key: [] for key in runs}
        for _ in range(rounds):
            for key, run in runs.items():
                gc.collect()
                started, used = time.perf_counter(), time.process_time()
                for _ in range(batch):
                    await run()
                cpu[key].append((time.process_time() - used) / batch * 1000)
                wall[key].append((time.perf_counter() - started) / batch * 1000)
    return {key: (statistics.median(cpu[key]), statistics.median(wall[key])) for key in runs}


def _exchange(http: httpx.AsyncClient, upstream_url: str, size: int, callers: int) -> Any:
    url = upstream_url + NUMBERS

    async def one(caller: int) -> None:
        response = await http.get(
            url, params={"max": size}, headers={"Authorization": f"{CALLER_PREFIX}{caller}"}
        )
        assert response.status_code == 200, response.status_code
        assert len(orjson.loads(response.content)["phoneNumbers"]) == size

    async def run() -> None:
        await asyncio.gather(*(one(caller) for caller in range(callers)))

    return run


def _app(client: httpx.AsyncClient, headers: dict[str, str], size: int) -> Any:
    payload = graphql_query(size)
    headers = {**headers, "Authorization": f"{CALLER_PREFIX}app"}

    async def run() -> None:
        response = await client.post("/graphql", content=payload, headers=headers)
        assert response.status_code == 200, response.text[:300]
        assert b'"errors"' not in response.content, response.text[:300]

    return run


def print_in_process(timings: Timings, rounds: int, batch: int) -> None:
    print()
    print(
        f"in process, uvloop, {rounds} interleaved rounds of {batch} calls; per call: CPU ms of "
        "this process (ratio to httpx) / wall ms (ratio); 'x4': four callers at once"
    )
    for measure in ("exchange", "exchange x4", "app"):
        for size in SIZES:
            base_cpu, base_wall = timings[measure, HTTPX, size]
            cells = []
            for name in CANDIDATES:
                cpu, wall = timings[measure, name, size]
                cells.append(
                    f"{name}: {cpu:6.3f} ({cpu / base_cpu:.2f}x) / {wall:6.3f} "
                    f"({wall / base_wall:.2f}x)"
                )
            print(f"  {measure:<12}{size:>5}  " + "   ".join(cells))


# --- over HTTP ------------------------------------------------------------------------------


def serve_with(name: str, port: int) -> None:
    """``numbers-gateway serve`` in this process with the candidate ``name`` as its wire."""
    wire = WIRES[name]

    def built(settings: Settings, base_url: str) -> httpx.AsyncBaseTransport:
        transport = wire(settings, base_url)
        print(f"{WIRE_MARK} {type(transport).__module__}.{type(transport).__name__}", flush=True)
        return transport

    factory.network_transport = built  # type: ignore[assignment]
    from gateway.server.cli import main

    sys.argv = ["numbers-gateway", "serve", "--host", "127.0.0.1", "--port", str(port)]
    main()


def over_http(
    upstream_url: str, args: argparse.Namespace, scratch: Path
) -> dict[tuple[str, int], list[float]]:
    """req/s per (candidate, size), one figure per pass."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {"GATEWAY_UPSTREAM_URL": upstream_url, "GATEWAY_CACHE_TTL": "0"}
    env |= {"GATEWAY_LOG_LEVEL": "warning"}
    processes: list[subprocess.Popen[bytes]] = []
    targets: dict[str, peer_gateway.Target] = {}
    try:
        for name in CANDIDATES:
            port = peer_gateway.free_port()
            log = scratch / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, __file__, "--serve", name, "--port", str(port)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            processes.append(process)
            _wait_ready(f"http://127.0.0.1:{port}/readyz", process, log)
            if WIRE_MARK not in log.read_text(errors="replace"):
                raise SystemExit(f"{name}: the served gateway did not build the benchmark's wire")
            targets[name] = peer_gateway.Target(
                name,
                f"http://127.0.0.1:{port}/graphql",
                "POST",
                lambda size: graphql_query(size),
                lambda document: list(document["data"]["phoneNumbers"]["nodes"]),
            )
        return asyncio.run(_load_all(targets, args, scratch))
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=20)


async def _load_all(
    targets: dict[str, Any], args: argparse.Namespace, scratch: Path
) -> dict[tuple[str, int], list[float]]:
    """req/s per (candidate, size) and pass; the load from wrk when installed (as
    ``peer_gateway.py``), else from its httpx loop."""
    limits = httpx.Limits(max_connections=args.concurrency)
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    rates: dict[tuple[str, int], list[float]] = {}
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60) as client:
        lengths = {}
        for size in SIZES:
            answers = {}
            for name, target in targets.items():
                body = await peer_gateway.reference_body(client, target, size)
                lengths[name, size], answers[name] = len(body), body
            if len(set(answers.values())) != 1:
                raise SystemExit(f"the candidates' {size}-item answers differ")
        use_wrk = shutil.which("wrk") is not None

        async def row(target: Any, size: int, seconds: float) -> Any:
            length = lengths[target.name, size]
            if use_wrk:
                return await peer_gateway.wrk_load(
                    target, size, length, seconds, args.concurrency, SEPARATE, "identity", scratch
                )
            return await peer_gateway.load(
                client, target, size, length, seconds, args.concurrency, SEPARATE
            )

        for index in range(args.passes):
            for size in SIZES:
                for name, target in targets.items():
                    print(f"  pass {index + 1}, {name}, {size} items", flush=True)
                    await row(target, size, args.warmup)
                    measured = await row(target, size, args.duration)
                    if measured.failures:
                        raise SystemExit(f"{name}: {measured.failures} failed requests")
                    rates.setdefault((name, size), []).append(measured.per_second)
    return rates


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready in 60 s")


def print_over_http(rates: dict[tuple[str, int], list[float]], args: argparse.Namespace) -> None:
    print()
    print(
        f"over HTTP, numbers-gateway serve, caching off, {args.concurrency} clients with a token "
        f"each, {args.passes} pass(es) of {args.duration:g} s; req/s median (range), ratio to "
        "httpx (median of the passes' ratios)"
    )
    for size in SIZES:
        cells = []
        for name in CANDIDATES:
            values = rates[name, size]
            ratios = [mine / base for mine, base in zip(values, rates[HTTPX, size], strict=True)]
            cells.append(
                f"{name} {statistics.median(values):7.1f} ({min(values):.0f}-{max(values):.0f}) "
                f"{statistics.median(ratios):.2f}x"
            )
        print(f"  {size:>6} items  " + "   ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per HTTP row")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per row")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--passes", type=int, default=2, help="interleaved HTTP passes")
    parser.add_argument("--rounds", type=int, default=15, help="in-process rounds")
    parser.add_argument("--batch", type=int, default=20, help="in-process calls per round")
    parser.add_argument("--skip-http", action="store_true", help="in process only")
    parser.add_argument("--serve", choices=[HTTPX, TUNED, AIOHTTP, WIRE], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve_with(args.serve, args.port)
        return
    with tempfile.TemporaryDirectory() as scratch:
        port = peer_gateway.free_port()
        upstream = subprocess.Popen(
            [sys.executable, str(STATIC_UPSTREAM), "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            root = f"http://127.0.0.1:{port}"
            _wait_ready(f"{root}/healthz", upstream, Path(scratch) / "none")
            upstream_url = f"{root}/v1"
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                timings = runner.run(in_process(upstream_url, args.rounds, args.batch))
            print_in_process(timings, args.rounds, args.batch)
            if not args.skip_http:
                rates = over_http(upstream_url, args, Path(scratch))
                print_over_http(rates, args)
            served = httpx.get(f"{root}/_stats").json()
            print(f"\nstatic upstream answered {json.dumps(served)}")
        finally:
            os.killpg(upstream.pid, signal.SIGTERM)
            upstream.wait(timeout=20)


if __name__ == "__main__":
    main()
