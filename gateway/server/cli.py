"""The ``numbers-gateway`` command: ``serve``, ``simulator`` and ``export-schema``."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from gateway.settings import ENV_PREFIX, Settings, SettingsError, load_settings
from gateway.simulator.dataset import DEMO_TOKEN_DESCRIPTIONS
from gateway.simulator.faults import FAULT_SPEC_HELP, FaultSpecError

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.types import ASGIApp

    from gateway.server.connections import ConnectionGuard
    from gateway.server.shutdown import ShutdownSequence

DEMO_TOKENS_HELP = "demo tokens (send as 'Authorization: Bearer <token>'):\n" + "\n".join(
    f"  {token:<22} {description}" for token, description in DEMO_TOKEN_DESCRIPTIONS.items()
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numbers-gateway",
        description="GraphQL gateway over Webex Calling's list-phone-numbers endpoint.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve the gateway (the embedded simulator unless GATEWAY_UPSTREAM_URL is set)",
        description="Serve GraphQL on /graphql, plus /healthz, /readyz and /metrics. Settings "
        "come from GATEWAY_* environment variables; flags override them.",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--upstream-url", help="overrides GATEWAY_UPSTREAM_URL")
    serve.add_argument("--env", choices=["development", "production"], help="overrides GATEWAY_ENV")
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port (overrides GATEWAY_WORKERS; default 1)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="proxies whose X-Forwarded-For/-Proto are trusted: addresses or networks, "
        "comma-separated, or '*' (overrides GATEWAY_FORWARDED_ALLOW_IPS; default: none)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight requests may take to finish (overrides "
        "GATEWAY_SHUTDOWN_TIMEOUT; default 20)",
    )
    serve.add_argument(
        "--root-path",
        metavar="PATH",
        help="the path prefix a proxy serves the gateway under and strips, e.g. /numbers "
        "(overrides GATEWAY_ROOT_PATH)",
    )

    simulator = commands.add_parser(
        "simulator",
        help="serve the Webex-compatible simulator alone",
        description="A stand-in for https://webexapis.com/v1 serving "
        "GET /v1/telephony/config/numbers.",
        epilog=DEMO_TOKENS_HELP + "\n\n" + FAULT_SPEC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulator.add_argument("--host", default="127.0.0.1")
    simulator.add_argument("--port", type=int, default=8001)
    simulator.add_argument("--size", type=int, default=1000, help="entries in the demo org")
    simulator.add_argument("--seed", type=int, default=7, help="seed of the generated data")
    simulator.add_argument(
        "--data", type=Path, help="serve this JSON file (a list of upstream-shaped items)"
    )
    simulator.add_argument(
        "--page-cap", type=int, default=2000, help="the server's largest page (default 2000)"
    )
    simulator.add_argument(
        "--fault", action="append", default=[], metavar="SPEC", help="a fault rule (see below)"
    )
    simulator.add_argument(
        "--churn",
        type=float,
        default=0.0,
        metavar="RATE",
        help="random changes per second to the demo data (assign, unassign, state, add, "
        "remove), to watch the change feed; default 0. POST /_simulator/changes makes "
        "chosen ones",
    )

    commands.add_parser("export-schema", help="print the GraphQL SDL")
    return parser


# The `serve` flags that override settings, by their Settings field names.
SERVE_OVERRIDES = (
    "upstream_url",
    "env",
    "workers",
    "forwarded_allow_ips",
    "shutdown_timeout",
    "root_path",
)
STARTUP_FAILURE = 3  # uvicorn's exit code when the server could not start
WORKER_APP = "gateway.server.cli:worker_app"


def _serve(args: argparse.Namespace) -> int:
    """Check everything once, here (every problem, one line each naming its variable; exit
    2), then serve: in this process, or with ``--workers N`` in N processes sharing one
    socket."""
    from gateway.observability.tracing import Tracing, TracingConfig, TracingConfigError

    overrides = {name: getattr(args, name) for name in SERVE_OVERRIDES}
    # Every problem at once, one line each: the GATEWAY_* settings, then the OTEL_* ones.
    problems: list[str] = []
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        problems += exc.problems
    try:
        tracing_config = TracingConfig.from_environment()
    except TracingConfigError as exc:
        problems.append(str(exc))
    if problems:
        _report(problems)
        return 2

    import uvicorn

    from gateway.observability.logs import configure_logging, uvicorn_log_config
    from gateway.server.app import create_app
    from gateway.server.connections import WorkerConnection
    from gateway.server.shutdown import ShutdownSequence

    tracing = Tracing()
    try:
        if settings.workers == 1:
            tracing = Tracing.start(tracing_config)
        # Workers build their own app; building one here too reports any start-up error
        # create_app finds (a bad trusted-documents manifest) once, before forking.
        app = create_app(settings, tracing=tracing)
    except SettingsError as exc:
        tracing.shutdown()
        _report(exc.problems)
        return 2
    configure_logging(settings.log_level)
    guard = connection_guard(settings)
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": "warning",
        # uvicorn's loggers keep no formatter of their own: their lines are JSON like ours.
        "log_config": uvicorn_log_config(),
        "access_log": False,  # RequestLogMiddleware logs each request, with more in it
        "root_path": settings.root_path,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "lifespan": "on",
        # WebSocket messages are bounded as HTTP bodies are (GATEWAY_MAX_BODY_BYTES): uvicorn
        # refuses a larger one (1009) before it is buffered whole, not at its 16 MiB default.
        # The sans-I/O implementation: websockets' legacy protocol is deprecated.
        "ws": "websockets-sansio",
        "ws_max_size": settings.max_body_bytes,
        # Connections past the bounds, and clients slow to send a request head, are refused;
        # X-Forwarded-For is read (by uvicorn's ProxyHeadersMiddleware) in the guard's layer.
        **guard.uvicorn_options(),
    }
    if settings.workers > 1:
        # Each worker is a new interpreter reading the environment: pass the flags on.
        for name, value in overrides.items():
            if value is not None:
                os.environ[ENV_PREFIX + name.upper()] = str(value)
        options["http"] = WorkerConnection  # each worker builds its own guard (worker_app)
        config = uvicorn.Config(WORKER_APP, factory=True, workers=settings.workers, **options)
        return _serve_workers(config, settings)
    try:
        metrics_config = _metrics_config(
            app, args.host, settings.metrics_port, header_timeout=settings.header_timeout
        )
        settle_heap()
        sequence = ShutdownSequence(guard, timeout=settings.shutdown_timeout)
        # The shutdown sequence drains and cuts; what uvicorn's own shutdown finds after it
        # (nothing, or a connection the cut just aborted) gets a moment, not the timeout.
        options["timeout_graceful_shutdown"] = LEFTOVER_SECONDS
        config = uvicorn.Config(sequence.wrap(guard.wrap(app)), **options)
        return _serve_here(config, settings, sequence, metrics_config)
    finally:
        tracing.shutdown()


def connection_guard(settings: Settings) -> ConnectionGuard:
    """The serving port's connection bounds, from the settings."""
    from gateway.server.connections import ConnectionGuard

    return ConnectionGuard(
        max_connections=settings.max_connections,
        header_timeout=settings.header_timeout,
        keep_alive_timeout=settings.keep_alive_timeout,
        max_connections_per_client=settings.max_connections_per_client,
        trusted_proxies=settings.forwarded_allow_ips,
    )


def _report(problems: Sequence[str]) -> None:
    """Why start-up stopped: one line per problem, each naming its variable."""
    for problem in problems:
        print(f"numbers-gateway: {problem}", file=sys.stderr)


def worker_app() -> ASGIApp:
    """The app of one ``--workers`` process (uvicorn imports it by name). The parent checked
    the same environment, so nothing here fails in a way ``serve`` has not reported."""
    from gateway.observability.logs import configure_logging
    from gateway.observability.tracing import Tracing, TracingConfig
    from gateway.server.app import create_app
    from gateway.server.connections import guard_this_worker

    settings = load_settings()
    configure_logging(settings.log_level)
    guard = connection_guard(settings)
    guard_this_worker(guard)
    app = create_app(settings, tracing=Tracing.start(TracingConfig.from_environment()))
    settle_heap()
    return guard.wrap(app)


# Container allocations between two collections of the young generation (CPython: 700).
YOUNG_COLLECTION_THRESHOLD: Final = 10_000


def settle_heap() -> None:
    """Everything built before serving (modules, the schema, the app) lives as long as the
    process: moved out of the collector's reach, so a collection walks only what requests
    made. A 2,000-item page makes thousands of dicts; without this, the collections they
    trigger walked the whole schema too, about a third of the page's CPU time (issue 22).

    The young generation is collected every ``YOUNG_COLLECTION_THRESHOLD`` container
    allocations instead of CPython's 700: a request's decoded page and its answer (about
    8,000 containers for 2,000 items) mostly die with the request, by reference counting,
    before a collection would walk them; at 700 about ten collections walked them mid-request
    and promoted them to be walked again (measured in process: an uncached 2,000-item
    request 8.4-8.8 -> 7.7-7.8 ms). Cyclic garbage waits for at most that many allocations
    longer, a few megabytes at most."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


def _metrics_config(app: Starlette, host: str, port: int | None, *, header_timeout: float) -> Any:
    """The metrics listener's uvicorn config (GATEWAY_METRICS_PORT), or None."""
    import uvicorn

    from gateway.observability.logs import uvicorn_log_config
    from gateway.server.app import create_metrics_app
    from gateway.server.connections import scrape_guard

    if port is None:
        return None
    # Scrapers, not callers: a few at once, behind the same guards as the main port (a
    # head deadline, idle sockets closed first when full), so held sockets cannot starve a
    # scrape.
    guard = scrape_guard(header_timeout=header_timeout)
    return uvicorn.Config(
        guard.wrap(create_metrics_app(app)),
        host=host,
        port=port,
        log_level="warning",
        log_config=uvicorn_log_config(),
        access_log=False,
        lifespan="off",
        # It stops once the gateway has: a scrape still in flight then gets a moment.
        timeout_graceful_shutdown=LEFTOVER_SECONDS,
        **guard.uvicorn_options(),
    )


def _serve_here(
    config: Any, settings: Settings, sequence: ShutdownSequence, metrics_config: Any = None
) -> int:
    """Serve on this process's loop: the gateway, and with GATEWAY_METRICS_PORT a second
    listener for ``/metrics`` on the same loop (so it shares the app's registry). The gateway's
    server owns the signals: the first SIGTERM or SIGINT runs the shutdown sequence
    (``gateway.server.shutdown``), a second one cuts its drain short; then the metrics
    listener stops."""
    import asyncio

    import uvicorn

    class GatewayServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                loop = asyncio.get_running_loop()
                _announce(self.servers[0].sockets[0].getsockname(), settings, loop_name(loop))

        async def shutdown(self, sockets: Any = None) -> None:
            # The sequence first (uvicorn alone would wait for every connection, streams and
            # WebSockets included, before it ran the lifespan's end); uvicorn's own shutdown
            # is its last step, closing what is left and running the lifespan's end.
            await sequence.run(self.servers, lambda: super(GatewayServer, self).shutdown(sockets))

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # uvicorn's own handler escalates only a second SIGINT, and then skips the
            # lifespan's end (Redis and the upstream client left open); a second SIGTERM did
            # nothing. Here either cuts the drain short, and the sequence still closes.
            # Not handed to uvicorn's, which would re-raise the signal after serving (for
            # SIGTERM, death by signal): finished is finished, exit 0.
            if self.should_exit:
                sequence.interrupt(sig)
            else:
                self.should_exit = True

    class MetricsServer(uvicorn.Server):
        bound = asyncio.Event()

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield  # the gateway's server handles SIGTERM/SIGINT for both

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            self.bound.set()

    server = GatewayServer(config)
    metrics_server = MetricsServer(metrics_config) if metrics_config is not None else None

    async def serve_both() -> None:
        if metrics_server is None:
            await server.serve()
            return
        listening = asyncio.create_task(metrics_server.serve())
        bound = asyncio.create_task(metrics_server.bound.wait())
        await asyncio.wait({listening, bound}, return_when=asyncio.FIRST_COMPLETED)
        bound.cancel()
        if not metrics_server.started:
            await listening  # it could not bind: its error is logged, start-up fails
            return
        address = metrics_server.servers[0].sockets[0].getsockname()
        _log().info("metrics_listening", url=f"http://{_shown(address)}/metrics")
        try:
            await server.serve()
        finally:
            metrics_server.should_exit = True
            await listening

    # A signal after serving (uvicorn restores the handlers it found) must not kill the
    # process mid-exit: what is left is bounded (``run_until_stopped``).
    signal.signal(signal.SIGTERM, _after_graceful_shutdown)
    with contextlib.suppress(KeyboardInterrupt):
        run_until_stopped(serve_both(), config.get_loop_factory())
    return 0 if server.started else STARTUP_FAILURE


# How long tasks still running after the shutdown sequence (none, unless one is stuck) get to
# end once cancelled, and what uvicorn's own shutdown waits for after the sequence's cut.
LEFTOVER_SECONDS: Final = 1  # whole seconds: uvicorn types its shutdown timeout as int


def run_until_stopped(main: Coroutine[Any, Any, None], loop_factory: Any) -> None:
    """Run ``main`` on the loop uvicorn would choose (uvloop when installed), as
    ``uvicorn.run`` does (``asyncio.run`` would always make asyncio's own, about a third
    slower per request). Then, unlike ``asyncio.run``, which waits for every task left to end
    once cancelled, however long that takes: tasks left get ``LEFTOVER_SECONDS``, and one
    that will not end is named in a log line and left behind, so the process still exits
    within its shutdown timeout."""
    import asyncio

    loop = (loop_factory or asyncio.new_event_loop)()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        try:
            left = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in left:
                task.cancel()
            if left:
                _, stuck = loop.run_until_complete(asyncio.wait(left, timeout=LEFTOVER_SECONDS))
                if stuck:
                    _log().error(
                        "gateway_tasks_abandoned",
                        tasks=sorted(str(task.get_coro()) for task in stuck)[:20],
                    )
            ending = loop.create_task(loop.shutdown_asyncgens())
            loop.run_until_complete(asyncio.wait({ending}, timeout=LEFTOVER_SECONDS))
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _serve_workers(config: Any, settings: Settings) -> int:
    import asyncio

    from uvicorn.supervisors import Multiprocess

    sock = config.bind_socket()
    # Listening now, not when the first worker is up: connections wait in the backlog
    # instead of being refused, so the URL announced answers.
    sock.listen(config.backlog)
    # Each worker runs on the loop uvicorn's factory makes (uvloop when installed).
    factory = config.get_loop_factory() or asyncio.new_event_loop
    probe = factory()
    event_loop = loop_name(probe)
    probe.close()
    _announce(sock.getsockname(), settings, event_loop)
    Multiprocess(config, sockets=[sock]).run()
    return 0


def _after_graceful_shutdown(signum: int, frame: FrameType | None) -> None:
    """Nothing left to do: the shutdown sequence has drained, cut and closed."""


def _log() -> Any:
    import structlog

    return structlog.get_logger("gateway.server.cli")


def _shown(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def loop_name(loop: Any) -> str:
    """``uvloop`` or ``asyncio``: the package of an event loop's class."""
    return str(type(loop).__module__).split(".")[0]


def _announce(address: Any, settings: Settings, event_loop: str) -> None:
    """Say where the gateway listens, once its socket is bound (so the URL answers)."""
    from gateway.server.app import serves_metrics_on_main_port

    if settings.metrics_port is None and not serves_metrics_on_main_port(settings):
        _log().info(
            "metrics_not_served",
            reason="production serves no /metrics on the main port; set GATEWAY_METRICS_PORT "
            "to serve it on a port of its own",
        )
    _log().info(
        "gateway_listening",
        url=f"http://{_shown(address)}{settings.root_path}/graphql",
        upstream="embedded simulator"
        if settings.embedded_simulator
        else str(settings.upstream_url),
        env=settings.env.value,
        workers=settings.workers,
        pid=os.getpid(),
        # uvloop (uvicorn's "auto" choice when it is installed) or asyncio's own loop.
        event_loop=event_loop,
    )


def _simulator(args: argparse.Namespace) -> int:
    from gateway.observability.logs import configure_logging, uvicorn_log_config
    from gateway.simulator import (
        FaultPlan,
        FaultRule,
        build_demo_world,
        create_simulator_app,
        world_from_items,
    )
    from gateway.simulator.app import serve_simulator

    try:
        rules = [FaultRule.parse(spec) for spec in args.fault]
    except FaultSpecError as exc:
        print(f"numbers-gateway simulator: --fault: {exc}", file=sys.stderr)
        return 2
    if not 1 <= args.size <= 100_000 or args.page_cap < 1:
        print(
            "numbers-gateway simulator: --size must be 1..100000, --page-cap >= 1", file=sys.stderr
        )
        return 2
    if not 0 <= args.churn <= 10_000:
        print("numbers-gateway simulator: --churn must be 0..10000 per second", file=sys.stderr)
        return 2
    if args.data is not None:
        try:
            items = json.loads(args.data.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"numbers-gateway simulator: --data: {exc}", file=sys.stderr)
            return 2
        if isinstance(items, dict):
            items = items.get("phoneNumbers")
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            print(
                "numbers-gateway simulator: --data must hold a JSON list of phone-number objects "
                "(or an object with a 'phoneNumbers' list)",
                file=sys.stderr,
            )
            return 2
        world = world_from_items(items, seed=args.seed)
    else:
        world = build_demo_world(size=args.size, seed=args.seed)
    app = create_simulator_app(
        world, page_cap=args.page_cap, faults=FaultPlan(rules, seed=args.seed), churn=args.churn
    )
    configure_logging()
    # uvicorn's own lines (a bad request, a failed bind) are JSON like serve's.
    return serve_simulator(
        app, world, host=args.host, port=args.port, log_config=uvicorn_log_config()
    )


def _export_schema() -> int:
    from gateway.schema.build import export_sdl

    sys.stdout.write(export_sdl())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "simulator":
        return _simulator(args)
    return _export_schema()


if __name__ == "__main__":
    raise SystemExit(main())
