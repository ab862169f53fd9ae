"""structlog set-up: JSON lines for machines (default), ``console`` for people.

Configured once by the entry point. Modules take a bound logger from their caller; a notice's
context (``event_id``, ``kind``, ``node``) is bound once with ``bind_notice`` and carried by every
line about it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from spotguard.model import Notice


def configure_logging(
    *, fmt: str = "json", level: str = "info", stream: TextIO | None = None
) -> None:
    out = stream if stream is not None else sys.stderr
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.UnicodeDecoder(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
    return logger.bind(**context) if context else logger


def bind_notice(
    log: structlog.typing.FilteringBoundLogger, notice: Notice
) -> structlog.typing.FilteringBoundLogger:
    return log.bind(event_id=notice.event_id, kind=notice.kind.value, node=notice.node)
