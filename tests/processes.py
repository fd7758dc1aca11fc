"""The one way tests start ``numbers-gateway serve`` and ``numbers-gateway simulator`` as
processes: on ``--port 0``, the URL read from the line each announces once its socket is bound
(``gateway_listening``, ``simulator_listening``), so there is no free-port race to retry.

``gateway_process(*flags, env=...)`` and ``simulator_process(*flags)`` are context managers
yielding a ``ServedProcess``: its announced ``url``, its ``origin``, and its log as parsed
JSON lines (``events(name)``, ``wait_for(...)``). Each process gets this environment without
the developer's ``GATEWAY_*``/``OTEL_*`` settings or HTTP proxies (all traffic is loopback).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

STARTUP_BOUND = 30.0  # seconds; only a backstop against a hang
STOP_BOUND = 20.0  # seconds a process has to drain and exit after SIGTERM
_PROXIES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
# The event each command logs once its socket is bound, with the URL in ``url``.
ANNOUNCEMENTS = {"serve": "gateway_listening", "simulator": "simulator_listening"}

Found = TypeVar("Found")


def clean_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without GATEWAY_*/OTEL_* settings or proxies, plus ``extra``."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("GATEWAY_", "OTEL_")) and name.lower() not in _PROXIES
    }
    return {**kept, "PYTHONUNBUFFERED": "1", **(extra or {})}


def numbers_gateway_command() -> str:
    """The installed console script beside this interpreter (or on PATH): the command a user
    runs, so its entry point is tested too."""
    beside = Path(sys.executable).parent / "numbers-gateway"
    found = str(beside) if beside.is_file() else shutil.which("numbers-gateway")
    if found is None:
        pytest.fail("the numbers-gateway command is not installed (pip install -e .)")
    return found


class ServedProcess:
    """``numbers-gateway ARGS`` with its output (stdout and stderr, one JSON object a line)
    read line by line in the background."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.process = subprocess.Popen(
            [numbers_gateway_command(), *args],
            env=clean_environment(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self.url = ""  # set once the process announces where it listens
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def origin(self) -> str:
        """``http://host:port`` of the announced URL."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def events(self, name: str, since: int = 0) -> list[dict[str, Any]]:
        """The JSON log lines whose ``event`` is ``name``, from line ``since`` on."""
        found = []
        for line in self.lines[since:]:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == name:
                found.append(entry)
        return found

    def tail(self, count: int = 30) -> str:
        return "\n".join(self.lines[-count:])

    def wait_for(
        self, predicate: Callable[[], Found], what: str, bound: float = STARTUP_BOUND
    ) -> Found:
        """Poll until ``predicate()`` is truthy and return it; fail if the process exits first.
        ``bound`` only stops a hang: tests wait for a state, never for an amount of time."""
        deadline = time.monotonic() + bound
        while True:
            found = predicate()
            if found:
                return found
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                pytest.fail(
                    f"{self.args[0]} exited ({self.process.returncode}) before {what}:\n"
                    f"{self.tail()}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting until {what}:\n{self.tail()}", pytrace=False)
            time.sleep(0.02)

    def stop(self) -> int:
        """SIGTERM (a graceful drain), SIGKILL if that takes too long; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_BOUND)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


@contextmanager
def served(command: str, *flags: str, env: dict[str, str] | None = None) -> Iterator[ServedProcess]:
    """``numbers-gateway COMMAND --port 0 FLAGS`` once it has announced its URL; stopped on exit.
    The port exists only once bound, so the announced URL is the one that answers."""
    server = ServedProcess([command, "--host", "127.0.0.1", "--port", "0", *flags], env)
    try:
        [listening] = server.wait_for(
            lambda: server.events(ANNOUNCEMENTS[command]),
            f"{command} announces its URL",
        )
        server.url = listening["url"]
        yield server
    finally:
        server.stop()


def gateway_process(
    *flags: str, env: dict[str, str] | None = None
) -> AbstractContextManager[ServedProcess]:
    """``numbers-gateway serve``: ``url`` is its ``/graphql`` endpoint (with any root path).
    Its embedded simulator answers at once (``GATEWAY_SIMULATOR_PACE=0``) unless ``env`` says
    otherwise: a test of long-lived parts should not wait on the demo's pacing."""
    return served("serve", *flags, env={"GATEWAY_SIMULATOR_PACE": "0", **(env or {})})


def simulator_process(
    *flags: str, env: dict[str, str] | None = None
) -> AbstractContextManager[ServedProcess]:
    """``numbers-gateway simulator``: ``url`` is its ``/v1`` base, as Webex's would be."""
    return served("simulator", *flags, env=env)
