"""Target (c): over HTTP, caching on, a repeated 50-item query, against a bare Starlette app
returning the same bytes. Prints both servers' requests per second from one run and the ratio
beside its target (>= 0.5x).

Both servers run as their own processes on loopback ports; the load comes from `wrk` (Debian's
package) when it is installed, else from an httpx loop (which then caps both figures, so the
ratio is flattered: install wrk). Run by hand: `python benchmarks/repeat_query.py`.
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

REPO = Path(__file__).resolve().parents[1]
QUERY = (
    "query Fifty { phoneNumbers(page: {first: 50}) { nodes { phoneNumber extension state "
    "phoneNumberType mainNumber includedTelephonyTypes tollFreeNumber isServiceNumber "
    "location { id name } owner { id type firstName lastName } } totalCount } }"
)
HEADERS = {"Authorization": "Bearer demo-admin", "Apollo-Require-Preflight": "1"}
TARGET = 0.5

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

app = Starlette(routes=[Route("/graphql", answer)])
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


def wrk(url: str, seconds: int, connections: int) -> float:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    for name, value in HEADERS.items():
        args += ["-H", f"{name}: {value}"]
    output = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if found is None:
        raise SystemExit(f"could not read wrk's output:\n{output}")
    return float(found.group(1))


async def python_load(url: str, seconds: int, connections: int) -> float:
    done = 0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(headers=HEADERS) as client:

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < stop:
                await client.get(url)
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(connections)))
        return done / (time.monotonic() - started)


def measure(url: str, seconds: int, connections: int) -> float:
    if shutil.which("wrk"):
        wrk(url, 2, connections)  # warm-up
        return wrk(url, seconds, connections)
    asyncio.run(python_load(url, 2, connections))
    return asyncio.run(python_load(url, seconds, connections))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    gateway_port, bare_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {"GATEWAY_LOG_LEVEL": "warning", "GATEWAY_MAX_IN_FLIGHT": "100000"}
    binary = REPO / ".venv" / "bin" / "numbers-gateway"
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as scratch:
        try:
            gateway = subprocess.Popen(
                [str(binary), "serve", "--port", str(gateway_port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(gateway)
            query_url = str(
                httpx.URL(f"http://127.0.0.1:{gateway_port}/graphql", params={"query": QUERY})
            )
            wait_ready(query_url, gateway)
            body = httpx.get(query_url, headers=HEADERS, timeout=30).content
            assert b'"errors"' not in body, body[:300]
            body_file = Path(scratch) / "answer.json"
            body_file.write_bytes(body)
            bare = subprocess.Popen(
                [sys.executable, "-c", BARE_APP, str(bare_port), str(body_file)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(bare)
            bare_url = f"http://127.0.0.1:{bare_port}/graphql"
            wait_ready(bare_url, bare)
            assert httpx.get(bare_url).content == body
            ours = measure(query_url, args.duration, args.connections)
            floor = measure(bare_url, args.duration, args.connections)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=20)
    loader = "wrk" if shutil.which("wrk") else "httpx (install wrk for honest figures)"
    print(
        f"repeated 50-item query ({len(body)} bytes), caching on, {loader}, "
        f"{args.connections} connections, {args.duration} s each, {os.cpu_count()} cores"
    )
    print(f"  numbers-gateway         {ours:9.0f} req/s")
    print(f"  bare Starlette (floor)  {floor:9.0f} req/s")
    verdict = "met" if ours / floor >= TARGET else "NOT met"
    print(f"  ratio {ours / floor:.2f}x   target >= {TARGET}x   {verdict}")


if __name__ == "__main__":
    main()
