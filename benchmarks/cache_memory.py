"""Target (e): with the cache full, the gateway's RSS stays within GATEWAY_CACHE_MAX_BYTES
(plus the whole-answer store, GATEWAY_ANSWER_REUSE_MAX_BYTES) and a fixed overhead.

Runs `numbers-gateway serve` (embedded simulator of 20,000 entries) twice through the same
many distinct 2,000-item pages (about 0.9 MB each when encoded): once with caching off, whose
final RSS is the fixed overhead (interpreter, app, simulator data, and the memory serving a
page of 2,000 leaves behind), and once with the caches on and evicting many times over. The
second RSS must stay within the first plus the bounds. Run by hand:
`python benchmarks/cache_memory.py`. The image and the manifests set
`MALLOC_MMAP_THRESHOLD_=131072` (glibc otherwise raises its mmap threshold after large frees and
~1 MB entries fragment the heap); the benchmark sets it too, and `--glibc-default` leaves it out
to show the difference.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
PAGE = (
    "query ($offset: Int) { phoneNumbers(page: {first: 2000, offset: $offset}) { nodes { "
    "phoneNumber extension esn state phoneNumberType location { id name } owner { id type } } } }"
)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS: this benchmark reads /proc (Linux)")


def serve_pages(cache: bool, args: argparse.Namespace) -> tuple[int, float]:
    """The RSS after serving ``args.pages`` distinct pages, and what the local cache holds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_SIMULATOR_SIZE": "20000",
        "GATEWAY_CACHE_TTL": "3600" if cache else "0",
        "GATEWAY_CACHE_MAX_BYTES": str(args.cache_mib * MIB),
        "GATEWAY_ANSWER_REUSE_MAX_BYTES": str(args.answers_mib * MIB),
        "GATEWAY_CACHE_CALLER_SHARE": "1",
    }
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # as the image and the manifests run it
    gateway = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "numbers-gateway"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        with httpx.Client(timeout=60, headers={"Authorization": "Bearer demo-admin"}) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the gateway did not start") from None
                    time.sleep(0.2)
            for page in range(args.pages):
                variables = {"offset": page * 7 % 18000}
                answer = client.post(url, json={"query": PAGE, "variables": variables})
                assert "errors" not in answer.json(), answer.text[:300]
            final = rss(gateway.pid)
            metrics = client.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
    held = next(
        (
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("gateway_cache_bytes")
        ),
        0.0,
    )
    return final, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-mib", type=int, default=64)
    parser.add_argument("--answers-mib", type=int, default=16)
    parser.add_argument("--pages", type=int, default=240)
    parser.add_argument("--glibc-default", action="store_true")
    args = parser.parse_args()
    overhead, _ = serve_pages(False, args)
    full, held = serve_pages(True, args)
    bound = (args.cache_mib + args.answers_mib) * MIB
    print(
        f"{args.pages} distinct 2,000-item pages; bounds: cache {args.cache_mib} MiB + "
        f"answers {args.answers_mib} MiB = {bound / MIB:.0f} MiB"
    )
    print(f"  fixed overhead (RSS, same pages, caching off)  {overhead / MIB:7.1f} MiB")
    print(f"  RSS with the caches full                       {full / MIB:7.1f} MiB")
    print(f"  local cache holds (gateway_cache_bytes)        {held / MIB:7.1f} MiB")
    growth = full - overhead
    verdict = "met" if full <= overhead + bound else "NOT met"
    print(
        f"  caches cost {growth / MIB:.1f} MiB of RSS; target RSS <= overhead + bounds = "
        f"{(overhead + bound) / MIB:.1f} MiB: {verdict}"
    )


if __name__ == "__main__":
    main()
