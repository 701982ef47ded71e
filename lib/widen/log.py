"""widen's log lines: a logger per module, lines a human reads on stderr.

Modules log through ``logging.getLogger(__name__)``; only ``setup`` (called by the CLI, the demo
and the notebooks) decides where lines go. A line reads ``[backfill] chunks 3/10, …``: the label is
the job the module serves. ``--log-format json`` writes one JSON object a line for log shippers,
and so does ``console`` (the CLI's reports and its last line); ``python -m widen.log JOB`` turns
every other line of a stream (the JVM's, Spark's, the Python workers') into one. Tracebacks only
with ``--verbose``. Lines are not rewritten for secrets: none is put into them (``widen.secrets``);
only a traceback, text from outside, is scrubbed.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from widen import secrets

#: package -> the label its modules' lines carry (a job's module: the job's name)
PACKAGES = {"streaming": "stream", "sources": "source", "targets": "target", "catalog": "catalog", "pg": "db",
            "core": "widen"}
MODULES = {"session": "spark", "cli": "widen"}
_state = {"format": "text", "verbose": False}


def label(logger_name: str) -> str:
    parts = logger_name.split(".")
    if len(parts) > 2 and parts[1] in PACKAGES:
        return PACKAGES[parts[1]]
    return MODULES.get(parts[-1], parts[-1])


def _traceback(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """The record's traceback, only with ``--verbose`` (a failure's one line says what happened)."""
    if not record.exc_info or not _state["verbose"]:
        return None
    return secrets.scrub(formatter.formatException(record.exc_info))


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        text = f"[{label(record.name)}] {level}{record.getMessage()}"
        trace = _traceback(self, record)
        return text + "\n" + trace if trace else text


def json_line(message: str, level: str = "info", job: str = "widen", logger: str = "widen",
              created: float | None = None, **extra: object) -> str:
    """One JSON object on one line (newlines inside ``message`` escaped)."""
    when = dt.datetime.fromtimestamp(created, dt.UTC) if created is not None else dt.datetime.now(dt.UTC)
    entry = {"time": when.isoformat(timespec="milliseconds"), "level": level, "job": job, "logger": logger,
             "message": message, **extra}
    return json.dumps(entry, ensure_ascii=False)


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        trace = _traceback(self, record)
        return json_line(record.getMessage(), record.levelname.lower(), label(record.name), record.name,
                         record.created, **({"traceback": trace} if trace else {}))


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
    _state.update(format=fmt, verbose=verbose)
    root = logging.getLogger("widen")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(_Json() if fmt == "json" else _Text())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def log4j_options() -> str:
    """JVM options for Spark's own lines in a JVM a Python driver starts (spark-submit.sh sets
    the same): errors only, JSON with ``--log-format json``; with ``--verbose`` Spark's defaults
    (warnings and tasks' failures too)."""
    folder = Path(__file__).parent
    if _state["format"] == "json":
        verbose = " -Dwiden.log.level=warn -Dwiden.log.tasks=warn" if _state["verbose"] else ""
        return f"-Dlog4j2.configurationFile=file:{folder / 'log4j2-json.properties'}{verbose}"
    return "" if _state["verbose"] else f"-Dlog4j2.configurationFile=file:{folder / 'log4j2-quiet.properties'}"


def console(text: str, level: int = logging.INFO) -> None:
    """A report or the CLI's last line on stderr: as it is, or (``--log-format json``) one JSON
    object holding the whole text."""
    if _state["format"] == "json":
        text = json_line(text, logging.getLevelName(level).lower())
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


_LEVELS = (("ERROR", "error"), ("FATAL", "error"), ("Exception", "error"), ("Traceback", "error"),
           ("WARN", "warning"))


def wrap_lines(lines: Iterable[str], out: TextIO, job: str = "widen") -> None:
    """Copy ``lines`` to ``out``, each a JSON object: a line that already is one as it is, any
    other (a JVM warning, a Python worker's stderr, a plain print) wrapped with a level guessed
    from its words."""
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if line.startswith("{"):
            try:
                if isinstance(json.loads(line), dict):
                    out.write(line + "\n")
                    out.flush()
                    continue
            except ValueError:
                pass
        level = next((name for word, name in _LEVELS if word in line), "info")
        out.write(json_line(secrets.scrub(line), level, job, "stderr") + "\n")
        out.flush()


if __name__ == "__main__":        # ./spark-submit.sh … --log-format json: every line of the job's stderr as JSON
    wrap_lines(sys.stdin, sys.stdout, sys.argv[1] if len(sys.argv) > 1 else "widen")
