"""Where a ship's channels live: part tables, columns, and the rule that places new channels.

Pure: no connection, no Spark session. The catalog (``widen.catalog.layouts``) records layouts; a
target (``widen.targets``) says its limits (row budget, whether column names fold case).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from widen.core import naming, typed

if TYPE_CHECKING:
    from collections.abc import Iterable

# Row layout overheads used to estimate a wide row's size (PostgreSQL heap tuple).
TUPLE_HEADER_BYTES = 24
TIMESTAMP_BYTES = 8
#: a text value longer than this is stored out of line (TOAST) and costs only a pointer
TOAST_INLINE_LIMIT = 2000
TOAST_POINTER_BYTES = 18
DEFAULT_VALUE_BYTES = 16.0

#: channel -> (its most common value format, average rendered bytes[, how many formats it was seen
#: with]), any may be unknown; typed columns go only to channels seen with one known format
NewChannels = dict[str, tuple]
#: names a (ship, part) table: ``naming.TableNamer`` or anything with its call
Namer = Callable[[str, int], str]


@dataclass
class ChannelColumn:
    data_channel_id: str
    column_name: str
    part: int
    value_format: str | None = None
    avg_bytes: float = DEFAULT_VALUE_BYTES
    #: ``core.typed``: text unless the target's columns are typed
    column_type: str = typed.TEXT


@dataclass
class ShipLayout:
    """Where one ship's channels live: part number -> table name, channel -> column."""
    ship_id: str
    tables: dict[int, str] = field(default_factory=dict)
    channels: dict[str, ChannelColumn] = field(default_factory=dict)
    #: part -> why its table does not have its natural name (recorded in ``wide_tables.name_note``)
    notes: dict[int, str] = field(default_factory=dict)

    def part_channels(self, part: int) -> list[ChannelColumn]:
        return sorted((c for c in self.channels.values() if c.part == part),
                      key=lambda c: c.column_name)

    @property
    def parts(self) -> list[int]:
        return sorted(self.tables)


def value_bytes(avg_bytes: float | None, column_type: str = typed.TEXT) -> float:
    """Estimated heap bytes of one value: a typed one's width, a text one's of the given average length."""
    if column_type in typed.TYPE_BYTES:
        return typed.TYPE_BYTES[column_type]
    length = DEFAULT_VALUE_BYTES if avg_bytes is None else float(avg_bytes)
    if length > TOAST_INLINE_LIMIT:
        return TOAST_POINTER_BYTES
    return length + (1 if length < 127 else 4)


def estimated_row_bytes(channels: list[ChannelColumn]) -> float:
    null_bitmap = (len(channels) + 1 + 7) // 8
    return TUPLE_HEADER_BYTES + null_bitmap + TIMESTAMP_BYTES + sum(
        value_bytes(c.avg_bytes, c.column_type) for c in channels)


class LayoutError(ValueError):
    pass


def assign_channels(layout: ShipLayout, new: NewChannels, namer: Namer, max_columns: int,
                    max_row_bytes: float, fold_case: bool = False, typed_columns: bool = False) -> list[ChannelColumn]:
    """Place channels not yet in ``layout`` (channel -> (format, avg bytes)); returns those added.

    Existing channels never move. New ones go to the last part while it stays under both
    ``max_columns`` and ``max_row_bytes``, else to a new part table (``_p2``, ``_p3`` …) named by
    ``namer(ship_id, part)`` (a ``naming.TableNamer``: unique across the fleet).
    With ``fold_case`` (Delta: column names are unique regardless of case) a channel whose column
    differs from one in the last part only by case goes to a new part, under its own name.
    With ``typed_columns`` a channel seen with one known format gets its type (``core.typed``).
    """
    def key(column: str) -> str:
        return column.lower() if fold_case else column

    def add_table(part: int) -> None:
        layout.tables[part] = namer(layout.ship_id, part)
        note = getattr(namer, "notes", {}).get((layout.ship_id, part))
        if note:
            layout.notes[part] = note

    added: list[ChannelColumn] = []
    used_columns = {(c.part, key(c.column_name)) for c in layout.channels.values()}
    if not layout.tables:
        add_table(1)
    for channel in sorted(c for c in new if c not in layout.channels):
        fmt, avg = new[channel][:2]
        formats = new[channel][2] if len(new[channel]) > 2 else 1
        column = naming.column_name(channel)
        kind = typed.type_for([fmt] if fmt is not None and formats == 1 else None, typed_columns)
        candidate = ChannelColumn(channel, column, 0, fmt,
                                  DEFAULT_VALUE_BYTES if avg is None else float(avg), kind)
        single = estimated_row_bytes([candidate])
        if single > max_row_bytes:
            raise LayoutError(f"ship {layout.ship_id!r}: channel {channel!r} alone needs about "
                              f"{single:.0f} bytes a row, over target.max_row_bytes={max_row_bytes}")
        part = max(layout.tables)
        members = layout.part_channels(part)
        if (len(members) + 1 > max_columns
                or estimated_row_bytes(members + [candidate]) > max_row_bytes
                or (part, key(column)) in used_columns):
            part += 1
            add_table(part)
        candidate.part = part
        used_columns.add((part, key(column)))
        layout.channels[channel] = candidate
        added.append(candidate)
    return added


def _same(name: str) -> str:
    return name


@dataclass(frozen=True)
class LayoutRules:
    """A target's limits for layouts: the table name template, columns and row bytes per part,
    whether column names fold case (Delta), and how the target tells two table names apart
    (``storage_key``: the name in PostgreSQL, the directory or metastore name in Delta)."""
    template: str
    max_columns: int
    max_row_bytes: float
    fold_case: bool = False
    storage_key: Callable[[str], str] = _same
    #: whether channels get typed columns (``target.column_types: typed``)
    typed: bool = False

    def namer(self, owners: dict[str, tuple[str, int]] | None = None, reserved_ships: Iterable[str] = ()) -> naming.TableNamer:
        return naming.TableNamer(self.template, owners, reserved_ships, self.storage_key)

    def grow(self, layout: ShipLayout, new: NewChannels, namer: Namer | None = None) -> list[ChannelColumn]:
        """``assign_channels`` under these rules; new tables named by ``namer`` (default: natural
        names, without looking at the fleet)."""
        return assign_channels(layout, new, namer or self.namer(), self.max_columns, self.max_row_bytes,
                               self.fold_case, self.typed)
