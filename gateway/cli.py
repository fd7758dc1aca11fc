"""The ``numbers-gateway`` command: ``serve``, ``simulator`` and ``export-schema``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.settings import SettingsError, load_settings
from gateway.simulator.dataset import DEMO_TOKEN_DESCRIPTIONS
from gateway.simulator.faults import FAULT_SPEC_HELP, FaultSpecError

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
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--upstream-url", help="overrides GATEWAY_UPSTREAM_URL")
    serve.add_argument("--env", choices=["development", "production"], help="overrides GATEWAY_ENV")

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

    commands.add_parser("export-schema", help="print the GraphQL SDL")
    return parser


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.observability.logs import configure_logging

    try:
        settings = load_settings(upstream_url=args.upstream_url, env=args.env)
    except SettingsError as exc:
        print(f"numbers-gateway: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
    )
    return 0


def _simulator(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.simulator import (
        FaultPlan,
        FaultRule,
        build_demo_world,
        create_simulator_app,
        world_from_items,
    )

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
        world, page_cap=args.page_cap, faults=FaultPlan(rules, seed=args.seed)
    )
    print(
        f"simulator: {sum(len(o.entries) for o in world.orgs.values())} entries in "
        f"{len(world.orgs)} org(s) at http://{args.host}:{args.port}/v1",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _export_schema() -> int:
    from gateway.api.schema import export_sdl

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
