"""Values that must never be shown: passwords from the environment or from a file.

``config`` registers every value it reads from a password variable or file; the CLI, the logging
handler and the JSON summary pass their text through ``scrub``. The first line of defence is never
to put a secret into a message; this one catches what slips through (a password interpolated into
another key, a path that is really a password).
"""
from __future__ import annotations

import threading

MASK = "***"
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
    """``text`` with every known secret replaced by ``***`` (longest first, so a secret that
    contains another is masked whole)."""
    if not _known or not text:
        return text
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
