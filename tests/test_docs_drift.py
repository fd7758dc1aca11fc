"""The docs against the code. The README is the five-minute start and ``docs/`` (the mkdocs site
``make docs`` builds, strict) holds the rest; every table a reader relies on is held to the code
here: the settings (names and plain defaults), the metrics ``/metrics`` exposes, the request
log's fields and its ``cache`` values, the command line, the make targets, the demo tokens, the
error codes, the filter's fields, the dependencies and the architecture's modules; and the
README's tour runs as written."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from graphql import GraphQLSchema, build_schema, parse, validate
from markdown.extensions.toc import slugify
from structlog.testing import capture_logs

from gateway.errors import ErrorCode
from gateway.server.cli import _parser as cli_parser
from gateway.settings import ENV_PREFIX, Environment, Settings
from gateway.simulator.dataset import DEMO_TOKEN_DESCRIPTIONS, SimulatorWorld
from tests.conftest import RecordingTransport, graphql, live_settings, running_gateway

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
ADMIN = {"Authorization": "Bearer demo-admin"}
# What structlog adds to every line, whatever the event.
LOG_ENVELOPE = {"event", "level", "log_level", "timestamp"}
# Collector families the table names by a pattern: prometheus_client's process and GC ones.
FAMILY_ROWS = {"process_": "process_*", "python_gc_": "python_gc_*"}
# Where `make run` serves: the tour's and the pages' commands are written against it.
MAKE_RUN = re.compile(r"^(?:https?://)?(?:localhost|127\.0\.0\.1):8000(/.*)?$")


# --- reading the pages ------------------------------------------------------------------------


def outside_fences(text: str) -> Iterator[tuple[str, bool]]:
    """Each line with whether it is outside a fenced code block (a ``#`` in a shell block is a
    comment, not a heading)."""
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            yield line, False
        else:
            yield line, not fenced


def section(page: str, heading: str) -> str:
    """The text under the heading (any level) of docs/<page>, up to the next heading of the
    same or a higher level."""
    text = (DOCS / page).read_text(encoding="utf-8")
    lines: list[str] = []
    level = 0
    for line, prose in outside_fences(text):
        found = re.match(r"^(#+) (.*)$", line) if prose else None
        if level and found and len(found[1]) <= level:
            break
        if level:
            lines.append(line)
        elif found and found[2] == heading:
            level = len(found[1])
    assert level, f"docs/{page} has no '{heading}' heading"
    return "\n".join(lines) + "\n"


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the text's first table whose first cells are code, as cells."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert rows, "the section has no table"
    return rows


def names_in(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def headings_of(path: Path) -> set[str]:
    """The anchors mkdocs gives the page's headings (the toc extension's slugs)."""
    text = path.read_text(encoding="utf-8")
    return {
        slugify(found[1].replace("`", ""), "-")
        for line, prose in outside_fences(text)
        if prose and (found := re.match(r"^#+ (.*)$", line))
    }


# --- settings ---------------------------------------------------------------------------------


def documented_default(cell: str) -> list[str] | str | None:
    """A default cell as values (``a`` / ``b`` for a row of two settings), None for "unset",
    "" for "empty", or the cell itself when it describes a default the code computes."""
    if cell == "unset":
        return None
    if cell == "empty":
        return ""
    parts = cell.split(" / ")
    if all(re.fullmatch(r"`[^`]*`", part) for part in parts):
        return [part.strip("`") for part in parts]
    return cell


def spelled(default: Any) -> str:
    """A field's default as the table spells it."""
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, Enum):
        return str(default.value)
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, tuple | list):
        return ",".join(str(item) for item in default)
    return str(default)


def test_the_settings_table_lists_exactly_the_settings_with_their_defaults() -> None:
    rows = table_rows(section("settings.md", "Settings"))
    fields = {f"{ENV_PREFIX}{name.upper()}": field for name, field in Settings.model_fields.items()}
    documented: list[str] = []
    wrong: list[str] = []
    for cells in rows:
        names = re.findall(rf"`({ENV_PREFIX}[A-Z0-9_]+)`", cells[0])
        documented += names
        default = documented_default(cells[1])
        for index, name in enumerate(names):
            if name not in fields:
                continue
            # A default worked out from other settings (the change feed's poll interval) is
            # documented as a production replica gets it, and its other case in words.
            production = {"env": Environment.PRODUCTION, "upstream_url": "https://x/v1"}
            actual = fields[name].get_default(call_default_factory=True, validated_data=production)
            if isinstance(default, list):
                ok = len(default) == len(names) and default[index] == spelled(actual)
            elif default is None or default == "":
                ok = actual == default
            else:  # described in words: only for a default the code works out at start-up
                ok = actual is None
            if not ok:
                wrong.append(f"{name}: documented {cells[1]!r}, the code's is {actual!r}")
    assert sorted(set(fields) - set(documented)) == [], "settings missing from docs/settings.md"
    assert sorted(set(documented) - set(fields)) == [], "docs/settings.md names unknown settings"
    assert len(documented) == len(set(documented)), "a setting has two rows"
    assert wrong == []


# --- metrics and the request log --------------------------------------------------------------


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
    for cells in table_rows(section("operations.md", "Metrics")):
        documented |= names_in(cells[0])
    assert sorted(exposed - documented) == [], "exposed but missing from the metrics table"
    assert sorted(documented - exposed) == [], "in the metrics table but not exposed"


def _log_fields() -> tuple[set[str], str]:
    """The fields the log-field table names, and its ``cache`` row's text."""
    rows = table_rows(section("operations.md", "Logs"))
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
    assert sorted(logged - documented) == [], "logged but missing from the log-field table"
    assert sorted(documented - logged - {"traceId"}) == [], "in the log-field table, never logged"


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
    assert sorted(seen - names_in(cache_row)) == [], "logged but not in the table's cache row"


# --- commands ---------------------------------------------------------------------------------


def _help(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli_parser().parse_args([*args, "--help"])
    return out.getvalue()


def test_the_command_line_table_lists_every_command_and_flag() -> None:
    choices = re.findall(r"\{([a-z,-]+)\}", _help())[0]
    rows = {
        found[1]: cells[0]
        for cells in table_rows(section("commands.md", "The command line"))
        if (found := re.match(r"`numbers-gateway ([a-z-]+)", cells[0]))
    }
    assert sorted(rows) == sorted(choices.split(","))
    for command, synopsis in rows.items():
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", _help(command))) - {"--help"}
        documented = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", synopsis))
        assert sorted(flags - documented) == [], f"`{command}` flags missing from the table"
        assert sorted(documented - flags) == [], f"the table names unknown `{command}` flags"


def test_the_make_targets_table_lists_exactly_the_makefiles_targets() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    [phony] = re.findall(r"^\.PHONY:(.*)$", makefile, re.M)
    documented = {
        found[1]
        for cells in table_rows(section("commands.md", "Make targets"))
        if (found := re.fullmatch(r"`make ([a-z-]+)`", cells[0]))
    }
    assert sorted(set(phony.split()) ^ documented) == []
    assert re.search(r"^test:.*\bdocs\b", makefile, re.M), "`make test` runs `make docs`"


def test_the_demo_token_table_lists_exactly_the_simulators_tokens() -> None:
    rows = table_rows(section("simulator.md", "Demo tokens"))
    assert [cells[0].strip("`") for cells in rows] == list(DEMO_TOKEN_DESCRIPTIONS)


def test_the_error_table_lists_exactly_the_contract_codes() -> None:
    documented: set[str] = set()
    for cells in table_rows(section("schema.md", "Errors")):
        documented |= names_in(cells[0])
    assert sorted(documented ^ {code.value for code in ErrorCode}) == []


@pytest.fixture(scope="module")
def committed_schema() -> GraphQLSchema:
    """The committed SDL (held equal to the code's by `make schema-check`)."""
    sdl = (ROOT / "schema" / "numbers.graphql").read_text(encoding="utf-8")
    return build_schema(sdl, assume_valid_sdl=True)  # federation's directives are not defined


def test_the_filter_table_lists_exactly_the_filters_fields(
    committed_schema: GraphQLSchema,
) -> None:
    documented: set[str] = set()
    for cells in table_rows(section("schema.md", "The filter")):
        documented |= names_in(cells[0])
    fields = committed_schema.type_map["PhoneNumberFilter"].fields  # type: ignore[attr-defined]
    assert sorted(documented ^ set(fields)) == []


def _package(spec: str) -> str:
    return re.split(r"[\[<>=!~; ]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_the_dependency_tables_list_exactly_what_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    text = (DOCS / "dependencies.md").read_text(encoding="utf-8")
    tables = {"What running needs": project["dependencies"]}
    tables["What the tests need (the `test` extra)"] = project["optional-dependencies"]["test"]
    for heading, declared in tables.items():
        documented = set()
        for line in section("dependencies.md", heading).splitlines():
            if line.startswith("| ") and not line.startswith(("| package", "|---")):
                cell = re.sub(r"\(.*?\)", "", line.split("|")[1])  # "uvicorn (`[standard]`: …)"
                documented |= {_package(name) for name in cell.split(",")}
        assert sorted(documented ^ {_package(spec) for spec in declared}) == [], heading
    assert text.count("| package | why |") == 2


# --- architecture -----------------------------------------------------------------------------


def test_the_architecture_table_names_every_module() -> None:
    """Every module of the package (and every maintenance script under tools/) has its row in
    the architecture page's layer table, every module the page names exists, and the simulator's
    row names each of its modules."""
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:gateway|tools)/[\w/]+\.py)`", page))
    modules = {
        path.relative_to(ROOT).as_posix()
        for folder in ("gateway", "tools")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "__init__.py" and "simulator" not in path.parts
    }
    assert sorted(modules - named) == [], "modules missing from docs/architecture.md"
    assert sorted(named - modules) == [], "docs/architecture.md names modules that are gone"
    simulator = {p.stem for p in (ROOT / "gateway" / "simulator").glob("*.py")} - {"__init__"}
    line = next(row for row in page.splitlines() if "`gateway/simulator/`" in row)
    assert {name for name in simulator if f"`{name}`" not in line} == set()


# --- the README -------------------------------------------------------------------------------


def test_the_readme_shows_the_two_commands_and_links_only_to_what_exists() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "make run" in readme
    assert "make test" in readme
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links, "the README links into docs/"
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        assert (ROOT / target).is_file(), link
        if anchor:
            assert anchor in headings_of(ROOT / target), link
    for page in re.findall(r"\]\(docs/([\w-]+\.md)", readme):
        assert page in (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), page
    for path in re.findall(r"(?<![\w/])((?:tests|docs)/[\w/.-]+\.(?:mjs|json))", readme):
        assert (ROOT / path).is_file(), path


def shell_commands(text: str) -> Iterator[list[str]]:
    """The commands of the text's ``sh``/``bash`` blocks, each split as a shell would (comments
    dropped, continuation lines and quoted newlines joined)."""
    for block in re.findall(r"^```(?:sh|bash)\n(.*?)^```", text, re.M | re.S):
        pending = ""
        for line in block.splitlines():
            pending += line + "\n"
            if pending.endswith("\\\n"):
                pending = pending[:-2] + " "
                continue
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on
                continue
            pending = ""
            if words:
                yield words


def graphql_requests(text: str) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
    """Every curl in the text that asks `make run`'s /graphql: (method, headers, body)."""
    for words in shell_commands(text):
        if words[0] != "curl":
            continue
        headers: dict[str, str] = {}
        body: dict[str, Any] = {}
        url = ""
        method = "GET"
        options = iter(words[1:])
        for word in options:
            if word == "-H":
                name, _, value = next(options).partition(":")
                headers[name.strip().lower()] = value.strip()
            elif word in {"-d", "--data"}:
                body = json.loads(next(options))
                method = "POST"
            elif word == "-X":
                method = next(options)
            elif not word.startswith("-"):
                url = word
        address = urlsplit(url if "//" in url else f"http://{url}")
        if not MAKE_RUN.match(f"{address.netloc}{address.path}") or address.path != "/graphql":
            continue
        if not body:
            body = {key: values[0] for key, values in parse_qs(address.query).items()}
        yield method, headers, body


def pages_with_commands() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", pages_with_commands(), ids=lambda path: path.name)
def test_every_graphql_command_against_make_run_validates(
    path: Path, committed_schema: GraphQLSchema
) -> None:
    for _, _, body in graphql_requests(path.read_text(encoding="utf-8")):
        assert validate(committed_schema, parse(body["query"])) == [], body["query"]


def payloads(response: httpx.Response) -> list[dict[str, Any]]:
    """A JSON answer's one payload, or each part of a multipart stream."""
    if response.headers["content-type"].startswith("multipart/mixed"):
        return [json.loads(line) for line in response.text.splitlines() if line.startswith("{")]
    return [response.json()]


async def test_the_readme_tour_answers_as_written(gateway: httpx.AsyncClient) -> None:
    """The tour's queries and streams through the gateway (with the simulator the embedded one
    is built from): each answers 200 with no error. Subscriptions never end, so they are only
    validated (above)."""
    ran = 0
    for method, headers, body in graphql_requests(README.read_text(encoding="utf-8")):
        if body["query"].lstrip().startswith("subscription"):
            continue
        response = await gateway.request(method, "/graphql", json=body, headers=headers)
        assert response.status_code == 200, response.text
        for payload in payloads(response):
            assert "errors" not in payload, payload
            assert payload.get("data") is not None or payload.get("incremental"), payload
        ran += 1
    assert ran >= 3, "the tour shows a query, a second caller and a stream"


def test_the_tour_supergraph_fits_the_demo_org_and_the_pinned_packages(
    world: SimulatorWorld,
) -> None:
    """The people service's ids are the embedded simulator's (seed 7), and the npm packages the
    tour installs are the versions the tests pin."""
    people = json.loads((DOCS / "tour" / "people.json").read_text(encoding="utf-8"))
    org = world.demo_org
    names = {entry.location_id: entry.payload["location"]["name"] for entry in org.entries}
    assert [location["id"] for location in people["locations"]] == list(org.location_ids)
    assert all(names[location["id"]] == location["name"] for location in people["locations"])
    owners = {entry.owner_id for entry in org.entries if entry.owner_type == "PEOPLE"}
    assert people["me"] in owners
    assert {person["id"] for person in people["people"]} <= owners
    pinned = json.loads((ROOT / "tests" / "js" / "package.json").read_text(encoding="utf-8"))
    for path in (README, DOCS / "federation.md"):
        installs = re.findall(r"(@?[\w/.-]+)@(\d[\w.-]*)", path.read_text(encoding="utf-8"))
        assert installs, path
        for package, version in installs:
            assert pinned["dependencies"].get(package) == version, (path.name, package)
