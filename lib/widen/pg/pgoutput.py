"""Decoding of PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1).

The messages come one per row from ``pg_logical_slot_peek_binary_changes`` (or a replication
connection). Only what widen needs is kept: relations (to name the columns of a tuple), inserts,
updates, deletes and truncates with the transaction they belong to; ``Begin`` and ``Commit`` frame
transactions and give the commit's end LSN, which is the stream's offset. Values arrive in text
form, as the decoding session's output functions print them; an unchanged TOASTed value of an
UPDATE arrives as ``UNCHANGED`` (never a value), so a caller can tell it from NULL.

Reference: PostgreSQL documentation, "Logical Replication Message Formats".
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

#: the value of a column an UPDATE left unchanged and PostgreSQL did not send (a TOASTed value)
UNCHANGED = object()


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    columns: tuple[str, ...]


@dataclass
class Change:
    """One row change: ``op`` is ``insert``, ``update``, ``delete`` or ``truncate``; ``new`` and
    ``old`` map column names to text (None for NULL, ``UNCHANGED`` for an unsent TOASTed value);
    ``old`` holds the replica identity's columns (or the whole row with REPLICA IDENTITY FULL)."""
    op: str
    relation: Relation
    new: dict | None = None
    old: dict | None = None


@dataclass
class Transaction:
    xid: int
    #: the commit record's end: the stream's offset after this transaction
    end_lsn: int = 0
    commit_lsn: int = 0
    changes: list[Change] = field(default_factory=list)


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string(self) -> str:
        end = self.data.index(b"\0", self.pos)
        text = self.data[self.pos:end].decode()
        self.pos = end + 1
        return text

    def tuple(self, relation: Relation) -> dict:
        count = self.take("!h")
        values: dict = {}
        for i in range(count):
            kind = self.take("!c")
            name = relation.columns[i] if i < len(relation.columns) else f"#{i}"
            if kind == b"n":
                values[name] = None
            elif kind == b"u":
                values[name] = UNCHANGED
            elif kind in (b"t", b"b"):
                size = self.take("!i")
                raw = self.data[self.pos:self.pos + size]
                self.pos += size
                values[name] = raw.decode() if kind == b"t" else raw
            else:
                raise ValueError(f"pgoutput: unknown tuple column kind {kind!r}")
        return values


class Decoder:
    """Turns a sequence of pgoutput messages into committed transactions. Relations are remembered
    across calls (PostgreSQL sends a relation once per session before its first change; the SQL
    peek functions start a new session each call, so each call resends them)."""

    def __init__(self):
        self.relations: dict[int, Relation] = {}
        self._open: Transaction | None = None

    def feed(self, messages: Iterable[bytes]) -> Iterator[Transaction]:
        for message in messages:
            done = self._message(bytes(message))
            if done is not None:
                yield done

    def _message(self, data: bytes) -> Transaction | None:
        r = _Reader(data)
        kind = r.take("!c")
        if kind == b"B":
            _final_lsn, _ts, xid = r.take("!qqI")
            self._open = Transaction(xid)
        elif kind == b"C":
            _flags, commit_lsn, end_lsn, _ts = r.take("!bqqq")
            done, self._open = self._open, None
            if done is None:
                raise ValueError("pgoutput: a commit without its begin")
            done.commit_lsn, done.end_lsn = commit_lsn, end_lsn
            return done
        elif kind == b"R":
            oid = r.take("!I")
            schema, name = r.string(), r.string()
            _identity, count = r.take("!bh")
            columns = []
            for _ in range(count):
                r.take("!b")
                columns.append(r.string())
                r.take("!Ii")
            self.relations[oid] = Relation(oid, schema, name, tuple(columns))
        elif kind in (b"I", b"U", b"D"):
            relation = self.relations[r.take("!I")]
            change = Change({b"I": "insert", b"U": "update", b"D": "delete"}[kind], relation)
            part = r.take("!c")
            if part in (b"K", b"O"):
                change.old = r.tuple(relation)
                if kind == b"U":
                    part = r.take("!c")
            if part == b"N":
                change.new = r.tuple(relation)
            self._change(change)
        elif kind == b"T":
            count, _options = r.take("!ib")
            for _ in range(count):
                oid = r.take("!I")
                if oid in self.relations:
                    self._change(Change("truncate", self.relations[oid]))
        # 'O' origin, 'Y' type, 'M' message: nothing widen needs
        return None

    def _change(self, change: Change) -> None:
        if self._open is None:
            raise ValueError("pgoutput: a change outside a transaction")
        self._open.changes.append(change)
