"""Value rendering and row validation rules, expressed once (DESIGN.md, "Value rendering", "Bad rows").

The rendered value is computed in the *source* SQL, so a wide cell is byte for byte what PostgreSQL
prints; Java and Python print doubles differently and must never re-render one.
"""
from __future__ import annotations

from psycopg2 import sql

VALUE_FORMATS = ("Decimal", "Integer", "String", "Boolean")

#: reject reasons, in the order they are checked
REASON_NULL_SHIP = "null ship_id"
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
        "CASE WHEN {ship} IS NULL THEN {r1} WHEN {ch} IS NULL THEN {r2} WHEN {ch} = '' THEN {r3} "
        "WHEN {t} IS NULL THEN {r4} WHEN {fmt} IS NULL THEN {r5} "
        "WHEN {fmt} NOT IN ('Decimal', 'Integer', 'String', 'Boolean') THEN {r6} END"
    ).format(ship=col("ship_id"), ch=col("data_channel_id"), t=col("created_time"),
             fmt=col("value_format"), r1=sql.Literal(REASON_NULL_SHIP),
             r2=sql.Literal(REASON_NULL_CHANNEL), r3=sql.Literal(REASON_EMPTY_CHANNEL),
             r4=sql.Literal(REASON_NULL_TIME), r5=sql.Literal(REASON_NULL_FORMAT),
             r6=sql.Literal(REASON_UNKNOWN_FORMAT))
