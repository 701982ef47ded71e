"""Typed wide columns (``target.column_types: typed``): which type a channel gets, and which values
a typed column can hold without changing a cell.

Pure: Arrow and Python only. A wide cell's contract is the text the source prints for the value
(docs/design.md, "Value rendering"); a typed column holds a value only when printing it back gives that
text exactly. A channel gets the type of its value format when it was seen with one format only
(Decimal -> double precision, Integer -> bigint, Boolean -> boolean), else text. A reading of
another format met later (by a backfill chunk, the stream or a repair: the survey that chose the type
read only some rows), or a value that would not come back as its own text (a String reading in a
double channel: ``1.50``, ``abc``), turns the whole column to text first, so no cell ever changes.
The format decides even where the text would fit (an Integer ``7`` in a double column): a column's
type depends on the formats its channel has, never on which rows a survey happened to read.
"""
from __future__ import annotations

from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc

from widen.core.values import float8_text

TEXT = "text"
DOUBLE = "double precision"
BIGINT = "bigint"
BOOLEAN = "boolean"
COLUMN_TYPES = (TEXT, DOUBLE, BIGINT, BOOLEAN)

#: value format -> column type in typed mode
FORMAT_TYPES = {"Decimal": DOUBLE, "Integer": BIGINT, "Boolean": BOOLEAN, "String": TEXT}
#: typed column type -> the one value format it was chosen for
FORMAT_OF = {DOUBLE: "Decimal", BIGINT: "Integer", BOOLEAN: "Boolean"}
#: column type -> Spark SQL type
SPARK_TYPES = {TEXT: "string", DOUBLE: "double", BIGINT: "bigint", BOOLEAN: "boolean"}


def type_for(formats: dict[str, int] | list[str] | None, typed: bool) -> str:
    """The column type of a channel seen with ``formats`` (None or empty: not known)."""
    if not typed or not formats or len(formats) != 1:
        return TEXT
    return FORMAT_TYPES.get(next(iter(formats)), TEXT)


# -- which values a typed column holds exactly -------------------------------------------------------
#: an integer as PostgreSQL prints a bigint (no sign on 0, no leading zeros)
_BIGINT = r"^(0|-?[1-9][0-9]{0,18})$"
#: doubles PostgreSQL 12+ prints exactly so, whatever they are (no Python needed): at most 15
#: significant digits in fixed notation (decimal exponent -4 … 14). A decimal of at most 15 digits
#: is the only one of that length in its double's rounding interval, so it is the shortest text.
_FIXED_INT = r"^-?(0|[1-9][0-9]{0,14})$"
_FIXED_FRACTION = r"^-?(0|[1-9][0-9]*)\.[0-9]*[1-9]$"
_TOO_SMALL = r"^-?0\.0000"
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


@lru_cache(maxsize=65536)
def _double_exact(text: str) -> bool:
    try:
        return float8_text(float(text)) == text
    except ValueError:
        return False


def fits(column_type: str, values: pa.Array) -> bool:
    """Whether every non-NULL text in ``values`` reads into ``column_type`` and prints back as itself."""
    values = values.drop_null() if values.null_count else values
    if column_type == TEXT or not len(values):
        return True
    if column_type == BOOLEAN:
        return bool(pc.all(pc.is_in(values, value_set=pa.array(["true", "false"]))).as_py())
    if column_type == BIGINT:
        if not pc.all(pc.match_substring_regex(values, _BIGINT)).as_py():
            return False
        long = values.filter(pc.greater_equal(pc.utf8_length(values), 19))
        return all(_INT64[0] <= int(v) <= _INT64[1] for v in long.to_pylist())
    if column_type == DOUBLE:
        fast = pc.or_(pc.match_substring_regex(values, _FIXED_INT),
                      pc.and_(pc.and_(pc.match_substring_regex(values, _FIXED_FRACTION),
                                      pc.less_equal(pc.utf8_length(pc.utf8_ltrim(values, characters="-")), 16)),
                              pc.invert(pc.match_substring_regex(values, _TOO_SMALL))))
        rest = values.filter(pc.invert(fast))
        return all(_double_exact(v) for v in pc.unique(rest).to_pylist()) if len(rest) else True
    raise ValueError(f"unknown column type {column_type!r}")


def misfits(columns: list[tuple[str, str, pa.Array]]) -> list[str]:
    """The channels, of (channel, column type, values), whose values do not all fit their column."""
    return [channel for channel, column_type, values in columns if not fits(column_type, values)]


def other_format(column_type: str, formats: pa.Array) -> bool:
    """Whether ``formats`` (the value formats of a typed column's readings; NULL: not known) hold
    one the column was not chosen for."""
    expected = FORMAT_OF.get(column_type)
    if expected is None or not len(formats):
        return False
    return bool(pc.any(pc.not_equal(formats, expected)).as_py())


def required_formats(columns: dict[str, str]) -> dict[str, str]:
    """channel -> the value format its typed column requires, of ``columns`` (channel -> column type);
    text columns take every format and are left out."""
    return {channel: FORMAT_OF[kind] for channel, kind in columns.items() if kind in FORMAT_OF}


def text_of(column_type: str, value: str | float | bool | None) -> str | None:
    """A typed column's Python value (as psycopg2 or Spark return it) as the source prints it."""
    if value is None:
        return None
    if column_type == TEXT:
        return str(value)
    if column_type == DOUBLE:
        return float8_text(float(value))
    if column_type == BOOLEAN:
        return "true" if value else "false"
    return str(int(value))


#: the row width a typed value takes in a PostgreSQL heap tuple (alignment included)
TYPE_BYTES = {DOUBLE: 8.0, BIGINT: 8.0, BOOLEAN: 1.0}


__all__ = ["BIGINT", "BOOLEAN", "COLUMN_TYPES", "DOUBLE", "FORMAT_OF", "FORMAT_TYPES", "SPARK_TYPES", "TEXT",
           "TYPE_BYTES", "fits", "misfits", "other_format", "required_formats", "text_of", "type_for"]
