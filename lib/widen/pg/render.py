"""The rendering and reject rules of ``widen.core.values`` as PostgreSQL SQL.

``rendered_value`` is what a wide cell holds (``double_v::text`` …, computed by the server so no
client ever re-renders a double); ``reject_reason`` the first rule a row breaks (NULL for a valid
row); ``raw_reject`` the text array a rejected row travels as, and ``raw_reject_columns`` how the
ledger unpacks it again (one contract, ``values.RAW_REJECT_FIELDS``).
"""
from __future__ import annotations

from psycopg2 import sql

from widen.core import values


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


def reject_reason(alias: str | None = None) -> sql.Composable:
    """The reason a row is rejected, NULL for a valid row (the order of ``values.REASON_*``)."""
    col = _columns(alias)
    return sql.SQL(
        "CASE WHEN {ship} IS NULL THEN {r1} WHEN {ship} = '' THEN {r0} WHEN {ch} IS NULL THEN {r2} "
        "WHEN {ch} = '' THEN {r3} "
        "WHEN {t} IS NULL THEN {r4} WHEN {fmt} IS NULL THEN {r5} "
        "WHEN {fmt} NOT IN ({formats}) THEN {r6} END"
    ).format(ship=col("ship_id"), ch=col("data_channel_id"), t=col("created_time"),
             fmt=col("value_format"), r0=sql.Literal(values.REASON_EMPTY_SHIP),
             r1=sql.Literal(values.REASON_NULL_SHIP), r2=sql.Literal(values.REASON_NULL_CHANNEL),
             r3=sql.Literal(values.REASON_EMPTY_CHANNEL), r4=sql.Literal(values.REASON_NULL_TIME),
             r5=sql.Literal(values.REASON_NULL_FORMAT), r6=sql.Literal(values.REASON_UNKNOWN_FORMAT),
             formats=sql.SQL(", ").join(sql.Literal(f) for f in values.VALUE_FORMATS))


def valid_row(alias: str | None = None) -> sql.Composable:
    """True for a row that is pivoted; every other row goes to the rejects table."""
    return sql.SQL("({} IS NULL)").format(reject_reason(alias))


def raw_reject(alias: str | None = None) -> sql.Composable:
    """The raw-reject text array of a row (``values.RAW_REJECT_FIELDS``), as text."""
    col = _columns(alias)
    printed = {"reason": reject_reason(alias), "data_channel_id": col("data_channel_id"),
               "value_format": col("value_format"), "double_v": sql.SQL("{}::text").format(col("double_v")),
               "long_v": sql.SQL("{}::text").format(col("long_v")), "str_v": col("str_v"),
               "bool_v": sql.SQL("{}::text").format(col("bool_v"))}
    return sql.SQL("ARRAY[{}]::text").format(sql.SQL(", ").join(printed[f] for f in values.RAW_REJECT_FIELDS))


def raw_reject_columns(array: sql.Composable) -> dict[str, sql.Composable]:
    """The ``rejects`` columns of a raw-reject array (an expression of type text[]), typed back."""
    types = {"double_v": "double precision", "long_v": "bigint", "bool_v": "boolean"}
    out = {}
    for i, name in enumerate(values.RAW_REJECT_FIELDS, start=1):
        item = sql.SQL("({})[{}]").format(array, sql.Literal(i))
        out[name] = sql.SQL("{}::{}").format(item, sql.SQL(types[name])) if name in types else item
    return out
