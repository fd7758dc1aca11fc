"""End to end through real servers: uvicorn on free ports, a real HTTP client, real sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

EXAMPLE = (
    "{ phoneNumbers(page: {first: 5}) { nodes { phoneNumber owner { lastName } } totalCount } "
    "numberCounts { total } }"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(args: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run `numbers-gateway ARGS` until /healthz answers; stop it afterwards."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *args, "--port", str(port)],
        env={**base_env, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                stderr = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"server did not start: {stderr}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()


def post(url: str, query: str, **headers: str) -> dict[str, Any]:
    response = httpx.post(f"{url}/graphql", json={"query": query}, headers=headers, timeout=30)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_embedded_gateway_answers_the_readme_query_with_no_token() -> None:
    with serving(["serve"], free_port()) as url:
        body = post(url, EXAMPLE)
        assert "errors" not in body
        assert len(body["data"]["phoneNumbers"]["nodes"]) == 5
        assert body["data"]["numberCounts"]["total"] == body["data"]["phoneNumbers"]["totalCount"]
        assert httpx.get(f"{url}/readyz").status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        assert "gateway_upstream_requests_total" in metrics
        page = httpx.get(f"{url}/graphql", headers={"Accept": "text/html"})
        assert "phoneNumbers(page: {first: 5})" in page.text


def test_gateway_against_a_standalone_simulator() -> None:
    simulator_port = free_port()
    with (
        serving(["simulator"], simulator_port) as simulator_url,
        serving(["serve"], free_port(), env={"GATEWAY_UPSTREAM_URL": f"{simulator_url}/v1"}) as url,
    ):
        scoped = post(url, EXAMPLE, Authorization="Bearer demo-location-admin")
        assert "errors" not in scoped
        everything = post(url, EXAMPLE, Authorization="Bearer demo-admin")
        location_total = scoped["data"]["numberCounts"]["total"]
        assert 0 < location_total < everything["data"]["numberCounts"]["total"]
        locations = post(
            url,
            "{ phoneNumbers(page: {first: 2000}) { nodes { location { id } } } }",
            Authorization="Bearer demo-location-admin",
        )
        nodes = locations["data"]["phoneNumbers"]["nodes"]
        assert len(nodes) == location_total
        assert len({node["location"]["id"] for node in nodes}) == 1

        denied = post(url, EXAMPLE, Authorization="Bearer demo-no-scope")
        assert denied["data"] == {"phoneNumbers": None, "numberCounts": None}
        for error in denied["errors"]:
            assert error["extensions"]["code"] == "FORBIDDEN"
            assert error["extensions"]["upstreamStatus"] == 403
            assert error["extensions"]["trackingId"].startswith("ROUTER_")

        anonymous = post(url, EXAMPLE)
        assert {e["extensions"]["code"] for e in anonymous["errors"]} == {"UNAUTHENTICATED"}
