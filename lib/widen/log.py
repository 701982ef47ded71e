"""widen's log lines: a logger per module, lines a human reads on stderr, no secret ever.

Modules log through ``logging.getLogger(__name__)``; only ``setup`` (called by the CLI, the demo
and the notebooks) decides where lines go. A line reads ``[backfill] chunks 3/10, …``: the label is
the job the module serves. ``--log-format json`` writes one JSON object a line for log shippers.
Every line passes through ``widen.secrets.scrub``.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys

from widen import secrets

#: package -> the label its modules' lines carry (a job's module: the job's name)
PACKAGES = {"streaming": "stream", "sources": "source", "targets": "target", "catalog": "catalog", "pg": "db",
            "core": "widen"}
MODULES = {"session": "spark", "cli": "widen"}


def label(logger_name: str) -> str:
    parts = logger_name.split(".")
    if len(parts) > 2 and parts[1] in PACKAGES:
        return PACKAGES[parts[1]]
    return MODULES.get(parts[-1], parts[-1])


class _Scrub(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = secrets.scrub(record.getMessage())
        record.args = None
        return True


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        text = f"[{label(record.name)}] {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + secrets.scrub(self.formatException(record.exc_info))
        return text


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "job": label(record.name), "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["traceback"] = secrets.scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (so redirections and test capture work)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def setup(verbose: bool = False, fmt: str = "text") -> None:
    """Send widen's lines to stderr (INFO, or DEBUG with ``verbose``), as text or JSON."""
    root = logging.getLogger("widen")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _Stderr()
    handler.addFilter(_Scrub())
    handler.setFormatter(_Json() if fmt == "json" else _Text())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
