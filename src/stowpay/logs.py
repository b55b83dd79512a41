"""Logging set-up shared by every Stowpay process.

Log lines are structured and never carry secrets: tracebacks are rendered without local
variables (which may hold keys, webhook secrets or card data), values under keys that name
secrets are masked before rendering, and a card number in any other text (a client can put
one in a path, a query or a parameter's name) is written as asterisks, in uvicorn's access
log lines too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from .wire.metadata import mask_card_numbers

_SECRET_KEYS = ("secret", "password", "authorization", "api_key", "number", "pan", "token")


def _mask_event(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event):
        event[key] = _masked(key, event[key])
    return event


def _masked(key: object, value: Any) -> Any:
    """`value` logged under `key`: a secret's name masks it whole; a card number in any text,
    at any depth, is written as asterisks."""
    if isinstance(key, str) and any(s in key.lower() for s in _SECRET_KEYS):
        return "****"
    if isinstance(value, str):
        return mask_card_numbers(value)
    if isinstance(value, dict):
        return {k: _masked(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(None, v) for v in value]
    return value


class _AccessLogMask(logging.Filter):
    """Masks card numbers in uvicorn's access log lines (client, method, path, ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                mask_card_numbers(a) if isinstance(a, str) else a for a in record.args
            )
        return True


def _mask_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _AccessLogMask) for f in access.filters):
        access.addFilter(_AccessLogMask())


def configure(level: str = "warning", *, json: bool = False) -> None:
    """Configure structlog once for this process (a no-op if the host app already did)."""
    _mask_access_log()
    if structlog.is_configured():
        return
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_event,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
