"""Identifier rules (DESIGN.md, "Identifiers"). Pure: no Spark, no database.

PostgreSQL silently cuts identifiers to 63 bytes, so two long channel names that share 63 bytes
would collide. A name that does not fit is cut to its longest prefix of at most 54 bytes (on a
character boundary) and suffixed with ``_`` and the first 8 hex digits of its md5.
"""
from __future__ import annotations

import hashlib

MAX_IDENTIFIER_BYTES = 63
PREFIX_BYTES = 54
RESERVED_COLUMNS = frozenset({"created_time"})


def _utf8_prefix(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")[:max_bytes]
    # Drop a trailing partial multi-byte character.
    return encoded.decode("utf-8", errors="ignore")


def fit_identifier(name: str, force_hash: bool = False) -> str:
    """``name`` itself when it fits in 63 bytes, else prefix + ``_`` + md5[:8]."""
    if not force_hash and len(name.encode("utf-8")) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.md5(name.encode("utf-8")).hexdigest()[:8]
    return f"{_utf8_prefix(name, PREFIX_BYTES)}_{digest}"


def column_name(data_channel_id: str) -> str:
    """The wide column for a channel; ``created_time`` is the key, so a channel of that name is hashed."""
    if not data_channel_id:
        raise ValueError("a data_channel_id must be a non-empty string")
    return fit_identifier(data_channel_id, force_hash=data_channel_id in RESERVED_COLUMNS)


def table_name(template: str, ship_id: str, part: int = 1) -> str:
    """The wide table for a ship (part 1) or one of its part tables (``_p2``, ``_p3`` …)."""
    if not ship_id:
        raise ValueError("a ship_id must be a non-empty string")
    if part < 1:
        raise ValueError(f"part must be >= 1, got {part}")
    full = template.replace("{ship_id}", ship_id)
    if part > 1:
        full = f"{full}_p{part}"
    return fit_identifier(full)


def column_names(channels: list[str]) -> dict[str, str]:
    """Map each channel to its column, refusing a mapping where two channels share a column."""
    mapping: dict[str, str] = {}
    owner: dict[str, str] = {}
    for channel in channels:
        column = column_name(channel)
        if column in owner and owner[column] != channel:
            raise ValueError(f"channels {owner[column]!r} and {channel!r} both map to column {column!r}")
        owner[column] = channel
        mapping[channel] = column
    return mapping
