"""Target (e): with the cache full, the gateway's RSS stays within GATEWAY_CACHE_MAX_BYTES
(plus the whole-answer store, GATEWAY_RESPONSE_CACHE_MAX_BYTES) and a fixed overhead.

Starts `numbers-gateway serve` (embedded simulator of 20,000 entries), warms it up, reads its
RSS (the fixed overhead: interpreter, app, simulator data), then asks for many distinct
2,000-item pages (about 0.9 MB each when encoded) until both stores have evicted many times
over, and reads the RSS again. Run by hand: `python benchmarks/cache_memory.py`.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-mib", type=int, default=64)
    parser.add_argument("--answers-mib", type=int, default=16)
    parser.add_argument("--pages", type=int, default=240)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_SIMULATOR_SIZE": "20000",
        "GATEWAY_CACHE_TTL": "3600",
        "GATEWAY_CACHE_MAX_BYTES": str(args.cache_mib * MIB),
        "GATEWAY_RESPONSE_CACHE_MAX_BYTES": str(args.answers_mib * MIB),
        "GATEWAY_CACHE_CALLER_SHARE": "1",
    }
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

            def ask(offset: int) -> None:
                answer = client.post(url, json={"query": PAGE, "variables": {"offset": offset}})
                assert "errors" not in answer.json(), answer.text[:300]

            for offset in range(3):  # warm-up: code paths, allocator arenas
                ask(offset)
            baseline = rss(gateway.pid)
            peak = baseline
            for offset in range(3, 3 + args.pages):
                ask(offset * 7 % 18000)
                peak = max(peak, rss(gateway.pid))
            full = rss(gateway.pid)
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
        float("nan"),
    )
    bound = (args.cache_mib + args.answers_mib) * MIB
    print(
        f"{args.pages} distinct 2,000-item pages; bounds: cache {args.cache_mib} MiB + "
        f"answers {args.answers_mib} MiB = {bound / MIB:.0f} MiB"
    )
    print(f"  fixed overhead (RSS after warm-up)    {baseline / MIB:7.1f} MiB")
    print(f"  local cache holds (gateway_cache_bytes) {held / MIB:5.1f} MiB")
    print(f"  RSS with the caches full              {full / MIB:7.1f} MiB (peak {peak / MIB:.1f})")
    growth = full - baseline
    verdict = "within" if growth <= bound else "OVER"
    print(
        f"  growth {growth / MIB:.1f} MiB: {verdict} the {bound / MIB:.0f} MiB bound "
        f"(target: RSS <= bound + fixed overhead = {(bound + baseline) / MIB:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
