"""Value rendering and row validation rules, expressed once (DESIGN.md, "Value rendering", "Bad rows").

The rendered value is computed in the *source* SQL, so a wide cell is byte for byte what PostgreSQL
prints; Java and Python print doubles differently and must never re-render one. The one exception
is a source that is not PostgreSQL (a Delta table of narrow rows): ``float8_text`` reproduces
PostgreSQL's ``double precision`` output for it, tested against the server itself.
"""
from __future__ import annotations

import math
from decimal import Decimal

from psycopg2 import sql

VALUE_FORMATS = ("Decimal", "Integer", "String", "Boolean")

#: reject reasons, in the order they are checked
REASON_NULL_SHIP = "null ship_id"
REASON_EMPTY_SHIP = "empty ship_id"
REASON_NULL_CHANNEL = "null data_channel_id"
REASON_EMPTY_CHANNEL = "empty data_channel_id"
REASON_NULL_TIME = "null created_time"
REASON_NULL_FORMAT = "null value_format"
REASON_UNKNOWN_FORMAT = "unknown value_format"


def _columns(alias: str | None):
    """A function naming a source column, qualified by ``alias`` when one is given."""
    def col(name: str) -> sql.Composable:
        return sql.Identifier(alias, name) if alias else sql.Identifier(name)
    return col


def rendered_value(alias: str | None = None) -> sql.Composable:
    """``CASE value_format WHEN 'Decimal' THEN double_v::text … END`` (optionally qualified)."""
    col = _columns(alias)
    return sql.SQL(
        "CASE {fmt} WHEN 'Decimal' THEN {d}::text WHEN 'Integer' THEN {l}::text "
        "WHEN 'String' THEN {s} WHEN 'Boolean' THEN {b}::text END"
    ).format(fmt=col("value_format"), d=col("double_v"), l=col("long_v"), s=col("str_v"),
             b=col("bool_v"))


def valid_row_predicate(alias: str | None = None) -> sql.Composable:
    """True for a row that is pivoted; every other row goes to the rejects table."""
    return sql.SQL("({} IS NULL)").format(reject_reason_sql(alias))


def reject_reason_sql(alias: str | None = None) -> sql.Composable:
    """The reason a row is rejected, NULL for a valid row (same order as the Spark rule)."""
    col = _columns(alias)
    return sql.SQL(
        "CASE WHEN {ship} IS NULL THEN {r1} WHEN {ship} = '' THEN {r0} WHEN {ch} IS NULL THEN {r2} "
        "WHEN {ch} = '' THEN {r3} "
        "WHEN {t} IS NULL THEN {r4} WHEN {fmt} IS NULL THEN {r5} "
        "WHEN {fmt} NOT IN ('Decimal', 'Integer', 'String', 'Boolean') THEN {r6} END"
    ).format(ship=col("ship_id"), ch=col("data_channel_id"), t=col("created_time"),
             fmt=col("value_format"), r0=sql.Literal(REASON_EMPTY_SHIP), r1=sql.Literal(REASON_NULL_SHIP),
             r2=sql.Literal(REASON_NULL_CHANNEL), r3=sql.Literal(REASON_EMPTY_CHANNEL),
             r4=sql.Literal(REASON_NULL_TIME), r5=sql.Literal(REASON_NULL_FORMAT),
             r6=sql.Literal(REASON_UNKNOWN_FORMAT))


def float8_text(value: float | None) -> str | None:
    """``value::text`` as PostgreSQL 12+ prints a double (``extra_float_digits`` = 1, the default).

    The shortest correctly rounded digits strictly inside the value's rounding interval (Ryu, as
    PostgreSQL uses it, does not accept the interval's bounds; Python's ``repr`` does, so it is one
    digit short now and then), written the way PostgreSQL's ``float8out`` writes them: fixed
    notation for decimal exponents -4..14, otherwise ``d.ddde±XX``; ``NaN``, ``Infinity``,
    ``-Infinity``, ``-0``.
    """
    if value is None:
        return None
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = _shortest(value).normalize().as_tuple()
    text = "".join(map(str, digits))
    point = len(text) + exponent              # position of the decimal point in ``text``
    scientific = point - 1
    minus = "-" if sign else ""
    if -4 <= scientific < 15:
        if point <= 0:
            return f"{minus}0.{'0' * -point}{text}"
        if point >= len(text):
            return f"{minus}{text}{'0' * (point - len(text))}"
        return f"{minus}{text[:point]}.{text[point:]}"
    mantissa = text[0] + (f".{text[1:]}" if len(text) > 1 else "")
    return f"{minus}{mantissa}e{'-' if scientific < 0 else '+'}{abs(scientific):02d}"


def _shortest(value: float) -> Decimal:
    exact = Decimal(value)
    below, above = math.nextafter(value, -math.inf), math.nextafter(value, math.inf)
    low = (exact + Decimal(below)) / 2 if not math.isinf(below) else exact - (Decimal(above) - exact) / 2
    high = (exact + Decimal(above)) / 2 if not math.isinf(above) else exact + (exact - Decimal(below)) / 2
    low, high = min(low, high), max(low, high)
    candidate = Decimal(repr(value))
    if low < candidate < high:
        return candidate
    for places in range(len(candidate.normalize().as_tuple().digits), 17):
        candidate = Decimal(f"{value:.{places}e}")
        if low < candidate < high:
            return candidate
    return Decimal(f"{value:.16e}")
