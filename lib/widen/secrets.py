"""Passwords: kept out of everything widen prints, rather than cut out of it afterwards.

A password is read only where a connection opens (``config.Connection.password``) and handed to
the driver alone: it is in no setting (``${PGPASSWORD}`` in a config value is refused), no DSN or
JDBC URL (psycopg2 gets keyword parameters, pgjdbc a property), no repr, message, log line or
summary. libpq's and pgjdbc's connection errors name the user, host and port, never the password.
So widen's own text (summaries, reports, log lines) is never rewritten: rewriting it would corrupt
it (a password ``1`` inside a ship id ``IMO9300001``, inside the JSON summary).

What remains is text from outside that widen does not control: an exception's message or
traceback from a driver, Spark or the JVM. ``scrub`` masks known passwords there, the last line of
defence, and only passwords of at least ``MIN_LENGTH`` characters: a shorter one cannot be told
apart from ordinary data (ids, numbers) and masking it would destroy what the message says.
"""
from __future__ import annotations

import threading

MASK = "***"
#: passwords shorter than this are never masked in text (they are never put into it either)
MIN_LENGTH = 8
_known: set[str] = set()
_lock = threading.Lock()


def remember(value: str | None) -> None:
    """Treat ``value`` as a secret from now on (empty values are ignored)."""
    if value:
        with _lock:
            _known.add(value)
            stripped = value.strip()
            if stripped:
                _known.add(stripped)


def scrub(text: str) -> str:
    """Foreign text (an exception's message or traceback) with every known secret of at least
    ``MIN_LENGTH`` characters replaced by ``***``, longest first. Never for widen's own output."""
    if not _known or not text:
        return text
    with _lock:
        known = sorted((s for s in _known if len(s) >= MIN_LENGTH), key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
