"""Peak memory per in-flight upstream byte: reading and decoding one upstream page.

The gateway reads an upstream answer into one growing buffer (never a list of chunks joined
into a second copy) and decodes it with one ``orjson.loads`` from that buffer. This measures,
with ``tracemalloc``, the peak Python allocation of the upstream transport's bounded read
(``ResilientTransport`` over an ``httpx.MockTransport`` streaming the body in 64 KiB chunks, as
a socket would) and of the body the ``UpstreamClient`` is handed, plus the decode,
for a page of about 1 MB (2,000 items) and one of about 16 MB (the default
``GATEWAY_MAX_UPSTREAM_BYTES``), and prints it as bytes per body byte: split into the buffer
(the read alone) and the decoded objects (read + decode).
Run by hand: ``.venv/bin/python benchmarks/upstream_memory.py``.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import orjson

from gateway.simulator import build_demo_world, create_simulator_app
from gateway.upstream.transport import ResilientTransport

CHUNK = 64 * 1024
BASE = "http://upstream.test/v1"


async def page_body(target_bytes: int) -> bytes:
    """An upstream-shaped page of about ``target_bytes``, from a page the simulator serves."""
    simulator = create_simulator_app(build_demo_world(size=2000, seed=7))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=simulator)) as http:
        served = await http.get(
            f"{BASE}/telephony/config/numbers",
            params={"max": "2000"},
            headers={"Authorization": "Bearer demo-admin"},
        )
    items = served.json()["phoneNumbers"]
    copies = max(1, round(target_bytes / len(served.content)))
    return orjson.dumps({"phoneNumbers": items * copies})


class ChunkedBody(httpx.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self.body = memoryview(body)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), CHUNK):
            yield bytes(self.body[start : start + CHUNK])


async def measure(body: bytes, *, decode: bool) -> int:
    """Peak bytes allocated while one page is read (and, with ``decode``, decoded)."""
    wire = httpx.MockTransport(lambda request: httpx.Response(200, stream=ChunkedBody(body)))
    transport = ResilientTransport(wire, deadline=30, max_body_bytes=len(body) + 1)
    async with httpx.AsyncClient(transport=transport) as http:
        gc.collect()
        tracemalloc.start()
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        # What ``UpstreamClient`` does with an answer: the one chunk it is handed is the body.
        async with http.stream("GET", f"{BASE}/telephony/config/numbers") as response:
            [content] = [chunk async for chunk in response.aiter_bytes()]
        decoded = orjson.loads(content) if decode else None
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del content, decoded
        return peak - base


async def main() -> None:
    print(f"{'page':>10} {'body bytes':>12} {'read peak/byte':>15} {'read+decode peak/byte':>22}")
    for label, target in (("1 MB", 1_000_000), ("16 MB", 16_000_000)):
        body = await page_body(target)
        read = await measure(body, decode=False)
        whole = await measure(body, decode=True)
        print(f"{label:>10} {len(body):>12,} {read / len(body):>15.2f} {whole / len(body):>22.2f}")


if __name__ == "__main__":
    asyncio.run(main())
