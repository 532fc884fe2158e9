"""Logging of every stocksync process: one JSON object a line on stderr, the same formatter everywhere.

    setup(level)                    the root logger at `level`, one stderr handler, JsonFormatter
    config(level)                   the same as a logging.config dict (uvicorn takes it, and gives it to
                                    each of its worker processes)
    bind(channel=..., worker=...)   fields added to every record logged from this context on (the
                                    current asyncio task and the tasks it creates afterwards)

A record is `{"ts", "level", "logger", "msg", ...}`: ts in UTC with milliseconds, the level in lower case,
then the fields bound to the context (channel, worker, request_id) and the record's own `extra` fields
(the access log's method, path, status, duration_ms). An exception goes in "exc", still on one line.

Secrets: settings are logged through their redacting repr and credentials are never logged, but a URL
with a password can still reach a message through a library's error text; the formatter masks the
password of any `scheme://user:password@` it finds, in the message and in the traceback.
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

LEVELS = ("debug", "info", "warning", "error")
# Fields of every LogRecord (and what formatters add): the rest are a record's own `extra` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message",
                                                                           "taskName"}
_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.I)
_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("stocksync_log_fields", default=None)


def redact(text: str) -> str:
    """`text` with the password of every URL in it masked (redis://user:***@host)."""
    return _PASSWORD.sub(r"\g<head>***@", text) if "://" in text else text


def bind(**fields: Any) -> contextvars.Token:
    """Add fields to every record logged from the current context on (None removes one). Tasks created
    afterwards inherit them; answers the token to reset them with."""
    merged = {**(_fields.get() or {}), **fields}
    return _fields.set({k: v for k, v in merged.items() if v is not None})


def reset(token: contextvars.Token) -> None:
    _fields.reset(token)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        _fields.reset(token)


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the context's fields and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": redact(record.getMessage())}
        for key, value in (_fields.get() or {}).items():
            doc.setdefault(key, _plain(value))
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc:
                doc[key] = _plain(value)
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(doc).decode()


def level_name(level: str) -> str:
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    return level.upper()


def config(level: str = "info", access_log: bool = False) -> dict:
    """The logging configuration of a stocksync process, as a dictConfig dict. uvicorn's own loggers go
    through the same handler; its access log is off (stocksync.api.access logs requests, with their
    duration and request id, under `stocksync.access`, at INFO when access_log else at WARNING)."""
    upper = level_name(level)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "stocksync.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": upper},
        "loggers": {
            **{name: {"handlers": [], "level": upper, "propagate": True}
               for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
            "stocksync.access": {"handlers": [], "propagate": True,
                                 "level": "INFO" if access_log and upper in ("DEBUG", "INFO") else "WARNING"},
        },
    }


def setup(level: str = "info", access_log: bool = False) -> None:
    """Configure this process's logging (replacing any earlier set-up)."""
    logging.config.dictConfig(config(level, access_log))
