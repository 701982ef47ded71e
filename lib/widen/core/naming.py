"""Identifier rules (docs/design.md, "Identifiers"). Pure: no Spark, no database.

PostgreSQL silently cuts identifiers to 63 bytes, so two long channel names that share 63 bytes
would collide. A name that does not fit is cut to its longest prefix of at most 54 bytes (on a
character boundary) and suffixed with ``_`` and the first 8 hex digits of its md5.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

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


def _md5_8(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()[:8]


_PLAIN_DIR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_METASTORE_NAME = re.compile(r"[a-z0-9_]{1,100}")


def delta_dir_name(name: str, lower: bool = False) -> str:
    """The directory of a Delta wide table under its root, or with ``lower`` its metastore table
    name (which allows only lower-case letters, digits and ``_``): the name itself when it
    qualifies, else its allowed characters + ``_`` + the first 8 hex digits of its md5."""
    plain = _METASTORE_NAME if lower else _PLAIN_DIR
    if plain.fullmatch(name):
        return name
    stem = re.sub(r"[^a-z0-9_]" if lower else r"[^A-Za-z0-9_.-]", "_", name.lower() if lower else name)
    return f"{stem.lstrip('.-')[:60]}_{_md5_8(name)}"


class TableNamer:
    """Names each (ship, part) table so that no two are the same across the fleet.

    The rule (docs/design.md, "Identifiers"): a table gets its natural name (``table_name``) unless
    that name, compared by ``key`` (the storage name: the table name itself in PostgreSQL, the
    directory or metastore name in Delta), already belongs to another (ship, part), or is the
    natural main-table name of another ship in ``reserved_ships``. Then it gets the natural name's
    first 54 bytes + ``_`` + 8 hex digits of md5(ship_id, part, attempt), the first attempt that
    is free. A main table therefore keeps its natural name whenever it can, and ship ``S``'s part
    ``S_p2`` never takes ship ``S_p2``'s table. ``notes`` says why a name was changed.
    """

    def __init__(self, template: str, owners: dict[str, tuple[str, int]] | None = None,
                 reserved_ships: Iterable[str] = (), key: Callable[[str], str] = lambda name: name):
        self.template = template
        self.key = key
        self.owners: dict[str, tuple[str, int]] = dict(owners or {})
        self.reserved: dict[str, str] = {}
        for ship in reserved_ships:
            try:
                self.reserved.setdefault(key(table_name(template, ship, 1)), ship)
            except ValueError:
                continue
        self.notes: dict[tuple[str, int], str] = {}

    def __call__(self, ship_id: str, part: int) -> str:
        natural = table_name(self.template, ship_id, part)
        candidate, attempt = natural, 0
        while True:
            key = self.key(candidate)
            owner = self.owners.get(key)
            holder = self.reserved.get(key)
            if owner in (None, (ship_id, part)) and holder in (None, ship_id):
                break
            if candidate == natural:
                other = ("a reader view" if owner == ("", 0) else f"the table of ship {owner[0]!r} part {owner[1]}"
                         if owner else f"the table of ship {holder!r}")
                self.notes[(ship_id, part)] = f"{natural!r} is {other}"
            salt = "\x00".join((ship_id, str(part), str(attempt)))
            candidate = f"{_utf8_prefix(natural, PREFIX_BYTES)}_{_md5_8(salt)}"
            attempt += 1
        self.owners[key] = (ship_id, part)
        return candidate
