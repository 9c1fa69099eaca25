"""Structured logs on stderr: one JSON object per line, or an aligned text form for people.

Shared by the services (``coremesh-node``, ``coremesh-relay``, ``coremesh-bootstrap``).

JSON line: ``{"ts": "2025-01-01T12:00:00.123Z", "level": "info", "event": "relay.ready", ...fields}``.
Fields are flattened into the object (so ``jq .peer_id`` works); a field that would clash with
``ts``/``level``/``event``/``logger`` is prefixed with ``field_``.

Each service makes its own logger, ``log = EventLogger("coremesh_relay")``, and logs named events
with keyword fields (``log.info("relay.ready", listen=...)``). Records from
other stdlib loggers (the coremesh library, aiohttp) go through the same handler, with
``event = "log"`` and the text in ``msg``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any, Final

from .jsonable import jsonable

_RESERVED: Final = frozenset({"ts", "level", "event", "logger"})
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_FIELDS_ATTR: Final = "coremesh_fields"
_EVENT_ATTR: Final = "coremesh_event"
_HANDLER_NAME: Final = "coremesh_service"


def _ts(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_STANDARD_ATTRS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _record_fields(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    event = getattr(record, _EVENT_ATTR, None)
    fields: dict[str, Any] = dict(getattr(record, _FIELDS_ATTR, None) or {})
    if event is None:  # a plain stdlib record (the library, aiohttp): its text, plus its extra= fields
        event = "log"
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        fields = {"msg": record.getMessage(), **extras}
    if record.exc_info and record.exc_info[0] is not None:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return event, fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event, fields = _record_fields(record)
        out: dict[str, Any] = {
            "ts": _ts(record.created),
            "level": record.levelname.lower(),
            "event": event,
            "logger": record.name,
        }
        for key, value in fields.items():
            out[f"field_{key}" if key in _RESERVED else key] = jsonable(value, binary="hex")
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event, fields = _record_fields(record)
        parts = [_ts(record.created), f"{record.levelname.lower():<7}", event]
        exc = fields.pop("exc", None)
        for key, value in fields.items():
            value = jsonable(value, binary="hex")
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            if isinstance(value, str) and (not text or any(c in text for c in ' "=')):
                text = json.dumps(text, ensure_ascii=False)
            parts.append(f"{key}={text}")
        line = " ".join(parts)
        return f"{line}\n{exc}" if exc else line


class EventLogger:
    """Logs named events with keyword fields: ``log.info("relay.ready", listen=...)``."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(
                level, event, extra={_EVENT_ATTR: event, _FIELDS_ATTR: fields}, exc_info=exc_info
            )

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc_info=exc_info)


def configure(fmt: str = "json", level: str = "info", stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record (ours, the library's, aiohttp's) to ``stream`` (stderr) in ``fmt``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:  # reconfiguring: replace ours, leave others alone
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # aiohttp's per-request access log is noise for an admin API polled by health checks.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
