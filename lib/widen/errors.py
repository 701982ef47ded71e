"""One line that names what really went wrong, whatever wrapped it.

Spark wraps a Python worker's exception in pages of text ("An exception was thrown from the Python
worker:" … traceback … the real line), and a JDBC failure in an AnalysisException whose own message
("Couldn't connect to the database") hides the driver's cause. ``describe`` digs out the real
exception's class and message, for summaries, logs and ``backfill_chunks.error``.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator

import psycopg2

from widen import secrets

_TRACEBACK = "Traceback (most recent call last):"
_PG_PREFIX = re.compile(r"^(ERROR|FATAL|PANIC):\s+")
MAX_LENGTH = 500


def _clip(text: str) -> str:
    text = " ".join(text.split()) if "\n" in text else text.strip()
    return text if len(text) <= MAX_LENGTH else text[: MAX_LENGTH - 1] + "…"


def _python_exception_line(text: str) -> str | None:
    """The exception line of the last Python traceback in ``text`` (class: message)."""
    if _TRACEBACK not in text:
        return None
    lines = text.rsplit(_TRACEBACK, 1)[1].splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith((" ", "\t")):
            # A psycopg2 message may go on (DETAIL, HINT); keep its first line and the HINT.
            extra = [x.strip() for x in lines[i + 1:i + 4] if x.strip().startswith(("DETAIL:", "HINT:"))]
            name, _, message = line.partition(": ")
            return _clip(f"{name.rsplit('.', 1)[-1]}: {message}" + (" " + " ".join(extra) if extra else ""))
    return None


def _java_chain(err: BaseException) -> list[tuple[str, str]]:
    """(class, message) of the Java exception behind ``err`` and its causes, outermost first."""
    java = getattr(err, "java_exception", None) or getattr(err, "_origin", None)
    chain: list[tuple[str, str]] = []
    try:
        while java is not None and len(chain) < 20:
            chain.append((str(java.getClass().getName()), str(java.getMessage() or "")))
            java = java.getCause()
    except Exception:  # noqa: BLE001 - the JVM may be gone; describe what we have
        pass
    return chain


def describe(err: BaseException) -> str:
    """``Class: message`` of the exception that really failed (one line, at most 500 characters;
    a known password in the foreign text masked: ``widen.secrets.scrub``)."""
    return secrets.scrub(_describe(err))


def _describe(err: BaseException) -> str:
    text = str(err)
    chain = _java_chain(err)
    for candidate in [text, *(message for _, message in chain)]:
        line = _python_exception_line(candidate)
        if line:
            return line
    if chain:
        # The PostgreSQL driver's own exception says most (host, port, SQLSTATE text); else the root.
        pg = [c for c in chain if c[0].startswith("org.postgresql.")]
        name, message = (pg or chain)[-1 if not pg else 0]
        return _clip(f"{name.rsplit('.', 1)[-1]}: {message.strip().splitlines()[0] if message.strip() else ''}")
    pgerror = getattr(err, "pgerror", None)
    if pgerror:
        first = _PG_PREFIX.sub("", pgerror.strip().splitlines()[0])
        return _clip(f"{type(err).__name__}: {first}")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return _clip(f"{type(err).__name__}: {first}" if first else type(err).__name__)


#: SQLSTATE classes of errors that belong to one statement on one table (a ship's data or its
#: tables: data exceptions, constraint violations, a name or object problem, a program limit such
#: as a row too big, a lock not available, a statement timeout); anything else (a lost connection,
#: a full disk, a server shutting down) is the server's or the session's and concerns every ship
_SHIP_LEVEL_CLASSES = ("22", "23", "42", "54", "55")
_SHIP_LEVEL_CODES = ("57014",)


def is_ship_level(err: BaseException) -> bool:
    """Whether ``err`` concerns only the ship being written (so the others can go on without it)."""
    code = getattr(err, "pgcode", None)
    if code is None:
        # Not a server error: a psycopg2 error without a code is a lost connection; widen's own
        # checks (a layout that cannot be made) and Spark's errors on one ship's Delta tables are.
        return not isinstance(err, (psycopg2.Error, ConnectionError)) and not is_connection_failure(err)
    return code[:2] in _SHIP_LEVEL_CLASSES or code in _SHIP_LEVEL_CODES


def any_failure(err: BaseException) -> bool:
    """``one_ship``'s rule for steps that change one ship at a time and report every failure by
    ship (rollback, cut-over): whatever failed, the other ships are still tried."""
    return True


@contextlib.contextmanager
def one_ship(record: Callable[[BaseException], object],
             isolated: Callable[[BaseException], bool] = is_ship_level) -> Iterator[None]:
    """One ship's step of a fleet job: a failure that concerns only this ship (``isolated``, by
    default ``is_ship_level``) is handed to ``record`` and the job goes on with the other ships;
    any other failure (a lost server, an interrupt) is raised."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - classified by ``isolated``
        if not isolated(err):
            raise
        record(err)


_CONNECTION_TEXT = re.compile(
    r"connection (to \S+ )?refused|could not connect|connection attempt failed|server closed the connection|"
    r"terminating connection|connection reset|broken pipe|an i/o error occurred|eofexception|"
    r"the database system is (starting up|shutting down|in recovery mode|not yet accepting)|"
    r"no connection to the server|timeout expired|sockettimeoutexception|connection has been closed|"
    r"readtimeout: the source sent nothing|could not receive data from server|could not send data to server|"
    r"ssl syscall error|ssl connection has been closed|no route to host|network is unreachable|"
    r"could not translate host name|connection timed out|\boperationalerror: ", re.I)


def is_connection_failure(err: BaseException) -> bool:
    """Whether ``err`` says a server could not be reached or went away (rather than refusing a
    statement): what the backfill's circuit breaker counts."""
    if isinstance(err, ConnectionError):
        return True
    code = getattr(err, "pgcode", None)
    if code:
        return code.startswith("08") or code in ("57P01", "57P02", "57P03")
    if isinstance(err, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return True
    return bool(_CONNECTION_TEXT.search(describe(err)))


_OUT_OF_SPACE_TEXT = re.compile(r"no space left on device|could not extend file|disk full|temp_file_limit|"
                                r"diskfull|disk quota exceeded", re.I)


def is_out_of_space(err: BaseException) -> bool:
    """Whether ``err`` says a disk is full (SQLSTATE 53100 ``disk_full``, ``could not extend
    file … No space left on device``, a temporary file over ``temp_file_limit``, a full local disk
    under Spark): not transient, so retrying only makes more of the same failure."""
    code = getattr(err, "pgcode", None)
    if code in ("53100", "53400") and (code == "53100" or "temp_file_limit" in str(err)):
        return True
    return bool(_OUT_OF_SPACE_TEXT.search(describe(err)) or _OUT_OF_SPACE_TEXT.search(str(err)[:20000]))
