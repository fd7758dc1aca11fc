"""Target (c): over HTTP, caching on, a repeated 50-item query, as a GET and as a POST (what
frontends send; the answer store serves both), against a bare Starlette app returning the
same bytes. Prints both servers' requests per second and their CPU time per request (read
from /proc: what a loaded, shared machine disturbs least), each the median of ``--rounds``
rounds run alternately, and the ratios beside the target (>= 0.5x).

Both servers run as their own processes on loopback ports; the load comes from `wrk` (Debian's
package; a POST's method, body and content type from a small Lua script) when it is
installed, else from an httpx loop (which then caps both figures, so the ratio is flattered:
install wrk). The bare app answers a POST without reading its body: the least any server can
do. ``--previous PATH`` adds a gateway served from another source tree (``git archive HEAD
gateway | tar -x -C PATH``), measured in the same rounds: before and after, side by side. Run
by hand: `python benchmarks/repeat_query.py [--method both|GET|POST]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
QUERY = (
    "query Fifty { phoneNumbers(page: {first: 50}) { nodes { phoneNumber extension state "
    "phoneNumberType mainNumber includedTelephonyTypes tollFreeNumber isServiceNumber "
    "location { id name } owner { id type firstName lastName } } totalCount } }"
)
HEADERS = {"Authorization": "Bearer demo-admin", "Apollo-Require-Preflight": "1"}
# What Apollo Client POSTs for the same operation.
POST_BODY = orjson.dumps({"operationName": "Fifty", "variables": {}, "query": QUERY})
POST_HEADERS = HEADERS | {"Content-Type": "application/json"}
METHODS = ("GET", "POST")
TARGET = 0.5  # both: issue 22 set it for the GET, issue 31 for the POST
FLOOR = "bare Starlette (floor)"

BARE_APP = """
import sys
from pathlib import Path
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

body = Path(sys.argv[2]).read_bytes()

async def answer(request):
    return Response(body, media_type="application/json")

app = Starlette(routes=[Route("/graphql", answer, methods=["GET", "POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {process.returncode}")
        try:
            httpx.get(url, headers=HEADERS, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not start")


def wrk_post_script(body: bytes) -> str:
    """A wrk script that sends ``body`` as a JSON POST (wrk's flags cannot)."""
    text = body.decode()
    assert "]==]" not in text, "the body would end the Lua long string"
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{text}]==]\n"
    )


def wrk(url: str, seconds: int, connections: int, body: bytes | None) -> tuple[float, int]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    for name, value in HEADERS.items():
        args += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if body is not None:
            script.write(wrk_post_script(body))
            script.flush()
            args += ["-s", script.name]
        done = subprocess.run([*args, url], capture_output=True, text=True, check=True)
    output = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    if rate is None or count is None:
        raise SystemExit(f"could not read wrk's output:\n{output}")
    return float(rate.group(1)), int(count.group(1))


async def python_load(url: str, seconds: int, connections: int, body: bytes | None) -> float:
    done = 0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(headers=POST_HEADERS) as client:

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < stop:
                if body is None:
                    await client.get(url)
                else:
                    await client.post(url, content=body)
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(connections)))
        return done / (time.monotonic() - started)


def measure(url: str, seconds: int, connections: int, body: bytes | None = None) -> float:
    """Requests per second after a warm-up (``peer_gateway`` measures with this too): GETs
    of ``url``, or with ``body`` POSTs of it."""
    load(url, 2, connections, body)
    return load(url, seconds, connections, body)[0]


def load(url: str, seconds: int, connections: int, body: bytes | None) -> tuple[float, int]:
    """Requests per second, and how many were answered (``body``: POSTs, else GETs)."""
    if shutil.which("wrk"):
        return wrk(url, seconds, connections, body)
    rate = asyncio.run(python_load(url, seconds, connections, body))
    return rate, int(rate * seconds)


def post_url(get_url: str) -> str:
    """The ``/graphql`` URL a POST goes to: the GET's without its query string."""
    return str(httpx.URL(get_url).copy_with(query=None))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def shown(values: list[float], unit: str, digits: int = 0) -> str:
    if not values:
        return "n/a"
    low, high = min(values), max(values)
    return f"{median(values):,.{digits}f} {unit} ({low:,.{digits}f}-{high:,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--method", choices=["both", *METHODS], default="both")
    parser.add_argument("--previous", type=Path, help="a source tree to measure beside this one")
    args = parser.parse_args()
    methods = METHODS if args.method == "both" else (args.method,)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {"GATEWAY_LOG_LEVEL": "warning", "GATEWAY_MAX_IN_FLIGHT": "100000"}
    trees = {"numbers-gateway": REPO} | ({"previous tree": args.previous} if args.previous else {})
    processes: list[subprocess.Popen[bytes]] = []
    urls: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        try:
            for name, tree in trees.items():
                port = free_port()
                gateway = subprocess.Popen(
                    [sys.executable, "-m", "gateway.server.cli", "serve", "--port", str(port)],
                    env=env | {"PYTHONPATH": str(tree)},
                    cwd=tree,  # ``-m`` puts the working directory first on the path
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                processes.append(gateway)
                url = str(httpx.URL(f"http://127.0.0.1:{port}/graphql", params={"query": QUERY}))
                wait_ready(url, gateway)
                urls[name] = (url, gateway)
            body = httpx.get(urls["numbers-gateway"][0], headers=HEADERS, timeout=30).content
            assert b'"errors"' not in body, body[:300]
            for url, _ in urls.values():
                assert httpx.get(url, headers=HEADERS, timeout=30).content == body
                posted = httpx.post(post_url(url), content=POST_BODY, headers=POST_HEADERS)
                assert posted.content == body, posted.text[:300]
            body_file = Path(scratch) / "answer.json"
            body_file.write_bytes(body)
            bare_port = free_port()
            bare = subprocess.Popen(
                [sys.executable, "-c", BARE_APP, str(bare_port), str(body_file)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(bare)
            bare_url = f"http://127.0.0.1:{bare_port}/graphql"
            wait_ready(bare_url, bare)
            assert httpx.get(bare_url).content == body
            assert httpx.post(bare_url, content=POST_BODY).content == body
            urls[FLOOR] = (bare_url, bare)
            rates: dict[tuple[str, str], list[float]] = {}
            costs: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):  # alternately, so a busy moment slows all alike
                for method in methods:
                    for name, (url, process) in urls.items():
                        target = url if method == "GET" else post_url(url)
                        content = None if method == "GET" else POST_BODY
                        load(target, 2, args.connections, content)  # warm-up
                        before = cpu_seconds(process.pid)
                        rate, answered = load(target, args.duration, args.connections, content)
                        after = cpu_seconds(process.pid)
                        rates.setdefault((name, method), []).append(rate)
                        if before is not None and after is not None and answered:
                            cost = (after - before) / answered * 1e6
                            costs.setdefault((name, method), []).append(cost)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=20)
    loader = "wrk" if shutil.which("wrk") else "httpx (install wrk for honest figures)"
    print(
        f"repeated 50-item query ({len(body)} bytes), caching on, {loader}, "
        f"{args.connections} connections, {args.rounds} rounds of {args.duration} s, "
        f"{os.cpu_count()} cores; medians (ranges)"
    )
    for method in methods:
        for name in urls:
            key = (name, method)
            print(
                f"  {method:4s} {name:24s} {shown(rates[key], 'req/s'):34s} "
                f"{shown(costs.get(key, []), 'us CPU/req', 1)}"
            )
    for method in methods:
        floor_rate = median(rates[FLOOR, method])
        floor_costs = costs.get((FLOOR, method), [])
        for name in trees:
            ratio = median(rates[name, method]) / floor_rate
            verdict = "met" if ratio >= TARGET else "NOT met"
            line = f"  {method:4s} {name}: ratio {ratio:.2f}x by req/s"
            own_costs = costs.get((name, method), [])
            if own_costs and floor_costs:
                line += f", {median(floor_costs) / median(own_costs):.2f}x by CPU per request"
            print(f"{line}   target >= {TARGET}x   {verdict}")


if __name__ == "__main__":
    main()
