"""The README's operations tables against the running gateway: every metric ``/metrics``
exposes is in the metrics table and every row is a metric it exposes; every field of the
request log line is in the log-field table and vice versa, and every ``cache`` value a request
logs is one the table names. (The settings table has its own test in test_settings.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from structlog.testing import capture_logs

from tests.conftest import RecordingTransport, graphql, live_settings, running_gateway

README = Path(__file__).resolve().parents[1] / "README.md"
ADMIN = {"Authorization": "Bearer demo-admin"}
# What structlog adds to every line, whatever the event.
LOG_ENVELOPE = {"event", "level", "log_level", "timestamp"}
# Collector families the table names by a pattern: prometheus_client's process and GC ones.
FAMILY_ROWS = {"process_": "process_*", "python_gc_": "python_gc_*"}


def readme_section(heading: str) -> str:
    """The text under ``### heading`` up to the next heading of any level."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^#)", text, re.M | re.S)
    assert match is not None, f"the README has no '### {heading}' section"
    return match[1]


def table_rows(section: str) -> list[list[str]]:
    """The body rows of the section's first table, as cells."""
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    assert rows, "the section has no table"
    return rows


def names_in(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


async def test_the_metrics_table_lists_exactly_what_metrics_exposes(
    gateway: httpx.AsyncClient,
) -> None:
    exposition = (await gateway.get("/metrics")).text
    families = set(re.findall(r"^# TYPE (\S+) ", exposition, re.M))
    exposed = set()
    for name in families:
        base = name.removesuffix("_created")
        if base != name and {base, f"{base}_total"} & families:
            continue  # prometheus_client's creation time of a counter or histogram
        pattern = next(
            (row for prefix, row in FAMILY_ROWS.items() if name.startswith(prefix)), None
        )
        exposed.add(pattern or name)
    documented = set()
    for cells in table_rows(readme_section("Metrics")):
        documented |= names_in(cells[0])
    assert sorted(exposed - documented) == [], "exposed but missing from the README's table"
    assert sorted(documented - exposed) == [], "in the README's table but not exposed"


def _log_fields() -> tuple[set[str], str]:
    """The fields the log-field table names, and its ``cache`` row's text."""
    rows = table_rows(readme_section("Logs"))
    fields: set[str] = set()
    cache_row = ""
    for cells in rows:
        fields |= names_in(cells[0])
        if names_in(cells[0]) == {"cache"}:
            cache_row = cells[1]
    assert cache_row, "the log-field table has no `cache` row"
    return fields, cache_row


def _request_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == "http_request"]


async def test_the_log_field_table_lists_exactly_the_request_lines_fields(
    gateway: httpx.AsyncClient,
) -> None:
    with capture_logs() as logs:
        await graphql(
            gateway,
            "query Counts { numberCounts { total } }",
            headers={"apollographql-client-name": "drift", "apollographql-client-version": "1"},
        )
    [line] = _request_lines(logs)
    logged = set(line) - LOG_ENVELOPE
    documented, _ = _log_fields()
    # traceId is there only when tracing is on (tested with tracing in test_operations.py).
    assert sorted(logged - documented) == [], "logged but missing from the README's table"
    assert sorted(documented - logged - {"traceId"}) == [], "in the README's table, never logged"


async def test_every_cache_value_a_request_logs_is_in_the_log_field_table(
    recorder: RecordingTransport,
) -> None:
    """A miss, the identical operation answered again whole (reused), another operation over
    the same pages (a local hit), and a gateway that does not cache (bypass)."""
    counts = "query Counts { numberCounts { total } }"
    same_pages = "query Again { numberCounts { total assigned } }"
    seen: set[str] = set()
    with capture_logs() as logs:
        async with running_gateway(live_settings(), recorder) as client:
            # The cache report differs per answer, so answers carrying it are never reused.
            del client.headers["Gateway-Cache-Report"]
            for document in (counts, counts, same_pages):
                await graphql(client, document, headers=ADMIN)
        async with running_gateway(live_settings(cache_ttl=0), recorder) as client:
            await graphql(client, counts, headers=ADMIN)
    for line in _request_lines(logs):
        seen.update(line["cache"])
    assert {"miss:upstream", "reused:answer", "hit:local", "bypass:upstream"} <= seen, seen
    _, cache_row = _log_fields()
    assert sorted(seen - names_in(cache_row)) == [], "logged but not in the README's cache row"


def test_the_architecture_table_names_every_module() -> None:
    """Every module of the package has its line in the README's architecture table (the map of
    the layers), and every module the table names exists; the simulator is one line."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Architecture") : readme.index("## Dependencies")]
    named = set(re.findall(r"`(gateway/[\w/]+\.py)`", section))
    modules = {
        path.relative_to(root).as_posix()
        for path in (root / "gateway").rglob("*.py")
        if path.name != "__init__.py" and "simulator" not in path.parts
    }
    assert modules - named == set(), "modules missing from the README's architecture table"
    assert named - modules == set(), "the README's architecture table names modules that are gone"
    simulator = {p.stem for p in (root / "gateway" / "simulator").glob("*.py")} - {"__init__"}
    line = next(row for row in section.splitlines() if "`gateway/simulator/`" in row)
    assert {name for name in simulator if f"`{name}`" not in line} == set()
