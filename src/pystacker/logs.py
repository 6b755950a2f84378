"""Logging: readable lines on the console, JSON lines in a size-rotated file (the `log.*` keys).

Fields passed with `extra={...}` appear as keys of the JSON line (e.g. `msg_id`, `request_id`), so
one grep follows a message through every service.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

from pystacker.config import LogConfig

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR}
# Attributes every LogRecord has; anything else on a record came from `extra=` and is emitted.
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


# The request log line already says these in its message; the console does not repeat them.
_SHOWN_IN_MESSAGE = {"method", "path", "status", "duration_ms"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """`12:00:01 INFO  meta  POST /login 200 3.1ms user_id=7`: short, with the extras at the end."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items() if k not in _SHOWN_IN_MESSAGE)
        line = f"{stamp} {record.levelname:<5} {record.name:<18} {record.getMessage()}"
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(config: LogConfig, *, console: bool = True) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(_LEVELS[config.level])
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(ConsoleFormatter())
        root.addHandler(stream)
    if config.filename:
        path = Path(config.filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            path, maxBytes=config.max_size * 1024 * 1024, backupCount=config.max_backups, encoding="utf-8"
        )
        rotating.setFormatter(JSONFormatter())
        root.addHandler(rotating)
    # aiohttp's own access log duplicates our request-log middleware.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
