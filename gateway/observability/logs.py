"""Structured logging setup: one JSON object per line (console-friendly in a terminal).

structlog renders the gateway's own events; the standard library's loggers (uvicorn's
``uvicorn.error`` with its "Invalid HTTP request received." lines, ``uvicorn.access``, and any
library's) go through structlog's ``ProcessorFormatter`` to the same renderer, so in JSON mode
every line on stderr is JSON. Called by the CLI before serving (``uvicorn_log_config`` is what
``serve`` hands uvicorn so that it keeps this setup); importing the package configures nothing.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# The stdlib loggers uvicorn writes to; they are routed through the root handler below.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
_HANDLER_NAME = "gateway-structured"


def _shared_processors() -> list[structlog.typing.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    numeric = logging.getLevelNamesMapping()[level.upper()]
    render_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if render_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*_shared_processors(), structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(renderer, numeric)


def _route_standard_logging(renderer: structlog.typing.Processor, level: int) -> None:
    """Every stdlib record, uvicorn's included, rendered by ``renderer`` on stderr."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *_shared_processors(),
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    # Configuring twice (tests, a worker after its parent) replaces, never doubles, the line.
    root.handlers = [h for h in root.handlers if h.get_name() != _HANDLER_NAME] + [handler]
    # Libraries log requests at INFO (httpx: every upstream URL); only their warnings count.
    root.setLevel(max(level, logging.WARNING))
    for name in UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


def uvicorn_log_config(level: str = "warning") -> dict[str, Any]:
    """uvicorn's ``log_config``: its loggers with no handler of their own, propagating to the
    root handler ``configure_logging`` installs (uvicorn's default config would put its plain
    text formatters back)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            name: {"handlers": [], "level": level.upper(), "propagate": True}
            for name in UVICORN_LOGGERS
        },
    }
