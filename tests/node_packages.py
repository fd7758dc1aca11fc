"""The Node.js side of the test-suite: the pinned packages of ``tests/js`` and its scripts.

``tests/js/package.json`` and its ``package-lock.json`` pin Apollo Federation (composition,
gateway, subgraph, server), The Guild's composer, Hive Gateway's runtime (with its HTTP
transport), Apollo's usage-reporting protobuf (to decode ftv1), Apollo Client 3 and 4 (4 as
the npm alias ``@apollo/client-4``, with its peer ``rxjs``), urql, graphql-ws
(with ws), graphql-sse, graphql-http, and Relay (relay-compiler, whose npm package carries
its prebuilt binary, and relay-runtime). They are installed with ``npm ci`` once per lockfile into a cache OUTSIDE the repo::

    ${NUMBERS_GATEWAY_NODE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/numbers-gateway/node}/<lock16>/

where ``<lock16>`` is the first 16 hex digits of the lockfile's SHA-256. A marker file there
records a finished install, so later runs skip it; an ``fcntl`` lock keeps two pytest processes
from installing at once. Delete the folder to reclaim the space (about 320 MB per lockfile,
over a third of it relay-compiler's binaries for four platforms).

The scripts (``tests/js/*.mjs``) are copied next to that ``node_modules``, into
``<lock16>/scripts/<scripts16>/`` (content-addressed, so concurrent runs of different checkouts
never overwrite each other), and run from there: ESM resolves packages from the script's own
location, and ``NODE_PATH`` does not apply to ESM. Nothing is ever installed inside the repo.

API (every runner skips or fails the calling test as ``require_node`` does)::

    require_node() -> Path            the install dir; pytest.skip when node/npm are missing or
                                      older than Node 20, pytest.fail when the install fails
    node_modules() -> Path | None     the same without pytest: None when unavailable, and
                                      ensure_installed() raises NodeUnavailable (missing node) or
                                      NodeInstallFailed (npm ci failed) with the reason
    run_node(script, *args, env=None, timeout=120.0, cwd=None) -> CompletedProcess[str]
    run_node_json(script, *args, ...) -> Any      exit 0 asserted; the last stdout line as JSON
    start_node(script, *args, env=None, cwd=None, stderr=None) -> Popen[bytes]
    wait_listening(process, timeout=30.0) -> str  the URL of the script's `listening <url>` line
    node_server(script, *args, env=None, timeout=30.0) -> context manager of NodeServer
                                      (url, process, stderr()); stopped (SIGTERM) on exit

``env`` entries are added to this process's environment; Apollo's outbound telemetry is always
turned off (``APOLLO_TELEMETRY_DISABLED=true``, no ``APOLLO_KEY``).

The scripts, their arguments and their output (see each script's header comment)::

    compose.mjs <apollo|guild> <name=path.graphql>...
        -> {"ok", "composer", "errors": [msg], "codes": [code], "hints": [msg], "supergraphSdl"}
    people-subgraph.mjs --data people.json [--port 0] [--request-log file.jsonl]
        -> "listening http://127.0.0.1:<port>/"  (a Person/Location federation-2 subgraph)
    supergraph-gateway.mjs [--port 0] --subgraph name=url... [--subgraph-header name=value...]
        -> "listening http://127.0.0.1:<port>/"  (Apollo Gateway, forwards Authorization, adds
            each --subgraph-header to every subgraph request, e.g. Gateway-Router-Secret=xyz)
    hive-gateway.mjs --supergraph file.graphql [--port 0] [--subgraph name=url...]
        [--subgraph-header name=value...]
        -> "listening http://127.0.0.1:<port>/graphql"  (Hive Gateway over a composed supergraph;
            --subgraph gives each subgraph's real URL, as compose.mjs writes placeholders;
            forwards Authorization and adds each --subgraph-header, as supergraph-gateway.mjs)
    decode-ftv1.mjs [<base64>]  (or the base64 on stdin)
        -> the Apollo Trace as JSON (Trace.toObject: camelCase, longs as numbers, oneofs named);
           exit 1 with the reason on stderr when it does not decode
    apollo-client.mjs / urql-client.mjs --url URL (--query-file F | --query Q) [--variables JSON]
        [--headers JSON] [--mode post|get] [--apq on|off] [--repeat N]
        -> {"results": [{"data", "errors", "networkError"}], "requests": [{"method", "url",
            "headers", "body", "status", "response"}]}
    stream-clients.mjs --client apollo-defer|apollo4-defer20220824|apollo4-alpha9|urql|
        graphql-ws|graphql-sse|apollo-ws|apollo-multipart|apollo3-multipart --url URL
        (--query-file F | --query Q) [--variables JSON] [--token T] [--stop-at PHONE_NUMBER]
        [--until-nodes N] [--accept TYPE] [--fetch-policy no-cache|cache-first]
        -> queries: one line {"results": [...]} (Apollo: and "accept", urql: and "data");
           subscriptions: one line {"event": data} per event until --stop-at's (the multipart
           clients: and {"retry", "error"} per RetryLink retry), then {"done": true}
    graphql-http-audit.mjs --url URL [--headers JSON]
        -> {"results": [{"id", "name", "status", "reason"}], "ok", "notice", "warn", "error"}
    apollo-pagination.mjs --url URL --page-size N [--direction forward|backward]
        [--filter JSON] [--max-pages N]        (Apollo Client 3's relayStylePagination())
    relay-pagination.mjs --url URL --schema SDL --page-size N [--direction forward|backward]
        [--filter JSON] [--max-pages N]        (relay-compiler + relay-runtime)
        -> {"edges": [{"cursor", "node"}], "pageInfo", "totalCount", "pages", "requests":
            [variables sent]}: the client's own merged connection once paging ended

Example::

    with node_server("people-subgraph.mjs", "--data", str(data)) as people:
        composed = run_node_json("compose.mjs", "apollo", f"people={sdl_path}")
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

JS_DIR = Path(__file__).resolve().parent / "js"
MIN_NODE_MAJOR = 20  # @apollo/server 5 needs Node 20
INSTALL_TIMEOUT = 600.0
MARKER = ".installed.json"


class NodeUnavailable(RuntimeError):
    """node or npm is missing (or too old): tests that need them are skipped."""


class NodeInstallFailed(RuntimeError):
    """node is there but ``npm ci`` failed: tests that need it fail, never skip."""


_lock = threading.Lock()
_outcome: Path | NodeUnavailable | NodeInstallFailed | None = None


def cache_root() -> Path:
    """Where installs live: ``$NUMBERS_GATEWAY_NODE_CACHE`` or the XDG cache."""
    explicit = os.environ.get("NUMBERS_GATEWAY_NODE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "numbers-gateway" / "node"


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        raise NodeUnavailable(f"{missing} not found on PATH (Node {MIN_NODE_MAJOR}+ needed)")
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise NodeUnavailable(f"`node --version` failed: {exc}") from exc
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        raise NodeUnavailable(f"node {version} is older than Node {MIN_NODE_MAJOR}")
    return node, npm


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _install(npm: str) -> Path:
    lock_bytes = (JS_DIR / "package-lock.json").read_bytes()
    target = cache_root() / hashlib.sha256(lock_bytes).hexdigest()[:16]
    marker = target / MARKER
    if marker.is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".install.lock").open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
        if marker.is_file():  # another process installed while we waited
            return target
        shutil.copyfile(JS_DIR / "package.json", target / "package.json")
        (target / "package-lock.json").write_bytes(lock_bytes)
        started = time.monotonic()
        try:
            done = subprocess.run(
                # --ignore-scripts: no package here needs an install script (protobufjs's only
                # checks its CLI), and none may run code at install time.
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=target,
                env={**os.environ, "npm_config_update_notifier": "false"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise NodeInstallFailed(
                f"npm ci in {target} took over {INSTALL_TIMEOUT:.0f} s"
            ) from exc
        if done.returncode != 0:
            raise NodeInstallFailed(
                f"npm ci in {target} exited {done.returncode}:\n{_tail(done.stderr + done.stdout)}"
            )
        seconds = round(time.monotonic() - started, 1)
        marker.write_text(json.dumps({"seconds": seconds, "at": time.time()}) + "\n")
    return target


def ensure_installed() -> Path:
    """Install once per process (and once per lockfile across processes); return the install
    dir (the parent of ``node_modules``). Raises NodeUnavailable or NodeInstallFailed, and
    raises the same again on later calls without retrying."""
    global _outcome
    with _lock:
        if _outcome is None:
            try:
                _, npm = _tools()
                _outcome = _install(npm)
            except (NodeUnavailable, NodeInstallFailed) as exc:
                _outcome = exc
            except OSError as exc:  # an unwritable cache, a missing lockfile, ...
                _outcome = NodeInstallFailed(f"installing the Node packages failed: {exc}")
        if isinstance(_outcome, Path):
            return _outcome
        raise _outcome


def node_modules() -> Path | None:
    """The install dir (parent of ``node_modules``), or None when node is missing or the install
    failed; ``ensure_installed()`` raises the reason."""
    try:
        return ensure_installed()
    except (NodeUnavailable, NodeInstallFailed):
        return None


def require_node() -> Path:
    """The install dir; skips the test when node/npm are missing, fails it when the install
    failed (a broken install must never pass as a skip)."""
    try:
        return ensure_installed()
    except NodeUnavailable as exc:
        reason = f"Node.js harness unavailable: {exc}"
        print(reason)  # shown in the captured output
        pytest.skip(reason)
    except NodeInstallFailed as exc:
        pytest.fail(f"Node.js harness install failed: {exc}", pytrace=False)


def _scripts_dir(install_dir: Path) -> Path:
    """A content-addressed copy of tests/js/*.mjs beside the installed node_modules."""
    files = {path.name: path.read_bytes() for path in sorted(JS_DIR.glob("*.mjs"))}
    digest = hashlib.sha256()
    for name, body in files.items():
        digest.update(name.encode() + b"\0" + body + b"\0")
    parent = install_dir / "scripts"
    dest = parent / digest.hexdigest()[:16]
    if dest.is_dir():
        return dest
    parent.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    for name, body in files.items():
        (staging / name).write_bytes(body)
    try:
        staging.rename(dest)
    except OSError:  # another process made the same copy first
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _command(script: str, args: tuple[str, ...]) -> list[str]:
    if "/" in script or not (JS_DIR / script).is_file():
        raise ValueError(f"no script {script!r} in {JS_DIR}")
    install_dir = require_node()
    node = shutil.which("node") or "node"
    return [node, str(_scripts_dir(install_dir) / script), *args]


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    for name in ("APOLLO_KEY", "APOLLO_GRAPH_REF", "APOLLO_GRAPH_ID", "APOLLO_GRAPH_VARIANT"):
        env.pop(name, None)
    env["APOLLO_TELEMETRY_DISABLED"] = "true"  # @apollo/gateway phones home without it
    return env


def run_node(
    script: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``tests/js/<script>`` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        _command(script, args),
        env=_env(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_node_json(
    script: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    cwd: Path | str | None = None,
) -> Any:
    """``run_node``, fail the test unless it exits 0, and return its last stdout line as JSON."""
    done = run_node(script, *args, env=env, timeout=timeout, cwd=cwd)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        pytest.fail(
            f"{script} exited {done.returncode}:\n{_tail(done.stderr)}\n{_tail(done.stdout)}",
            pytrace=False,
        )
    return json.loads(lines[-1])


def start_node(
    script: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    stderr: IO[bytes] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``tests/js/<script>``; stdout is a binary pipe (read it with ``wait_listening``),
    stderr goes to ``stderr`` (default: inherited). The caller stops and waits for it."""
    return subprocess.Popen(
        _command(script, args),
        env=_env(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )


def wait_listening(process: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """Read the process's stdout until its ``listening <url>`` line; return the URL. Raises
    RuntimeError if it exits first, TimeoutError if it takes longer than ``timeout``."""
    assert process.stdout is not None, "start the process with stdout=PIPE (start_node does)"
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"listening "):
                    return line.decode().split(" ", 1)[1].strip()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no `listening` line within {timeout} s")
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = process.wait(timeout=10)
                raise RuntimeError(f"exited with {code} before printing `listening <url>`")
            buffer += chunk


@dataclass(frozen=True)
class NodeServer:
    """A running script: its URL, its process, and what it has logged on stderr so far."""

    url: str
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


@contextlib.contextmanager
def node_server(
    script: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[NodeServer]:
    """Start a server script, wait for its ``listening`` line, yield it, stop it on exit.
    A server that does not come up fails the test with the tail of its stderr."""
    handle, name = tempfile.mkstemp(prefix=f"{script}-", suffix=".stderr")
    os.close(handle)
    stderr_path = Path(name)
    try:
        with stderr_path.open("ab") as stderr:  # O_APPEND: reading it never races node's writes
            process = start_node(script, *args, env=env, stderr=stderr)
        try:
            try:
                url = wait_listening(process, timeout)
            except (RuntimeError, TimeoutError) as exc:
                log = _tail(stderr_path.read_text(errors="replace"))
                pytest.fail(f"{script} did not start: {exc}\n{log}", pytrace=False)
            yield NodeServer(url=url, process=process, stderr_path=stderr_path)
        finally:
            _stop(process)
    finally:
        stderr_path.unlink(missing_ok=True)
