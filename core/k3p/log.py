"""Logging setup: structlog, human-readable on a TTY and JSON lines otherwise."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(debug: bool = False, json: bool | None = None) -> None:
    """Route structlog and stdlib logging to stderr at INFO (DEBUG with ``debug``).

    ``json`` None picks the format from stderr: a TTY gets colourful console lines, a
    file or pipe gets one JSON object per line so log shippers can parse it.
    """
    level = logging.DEBUG if debug else logging.INFO
    if json is None:
        json = not sys.stderr.isatty()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer]
        if json
        else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (uvicorn, asyncio, grpc) log through stdlib logging: render them the same way.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log line per request is noise for an API server: keep it at debug.
    logging.getLogger("uvicorn.access").setLevel(logging.DEBUG if debug else logging.WARNING)
    # httpx logs every request at INFO: the API server's clients make thousands.
    logging.getLogger("httpx").setLevel(logging.DEBUG if debug else logging.WARNING)
    # uvicorn's "Started server process" and "Uvicorn running on" come once per listener
    # (API server, kubelet) with the same PID: start-up noise, k3p's own lines say what listens.
    logging.getLogger("uvicorn.error").setLevel(logging.DEBUG if debug else logging.WARNING)


def error_text(error: BaseException) -> str:
    """An exception as one line for a log field or message; never empty.

    Timeouts and cancelled connections often carry no message: their type is then the
    only thing that says what went wrong.
    """
    return str(error) or type(error).__name__
