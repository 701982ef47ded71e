"""The rendering and reject rules of ``widen.core.values`` as PostgreSQL SQL.

``rendered_value`` is what a wide cell holds: what PostgreSQL 12+ prints for the value
(``double_v::text`` …), computed by the source server so no client ever re-renders a double;
``reject_reason`` the first rule a row breaks (NULL for a valid row); ``raw_reject`` the text array
a rejected row travels as, and ``raw_reject_columns`` how the ledger unpacks it again (one contract,
``values.RAW_REJECT_FIELDS``).

A server older than 12 prints a double with ``%.{15 + extra_float_digits}g``: 15 digits lose
information, 17 are not the shortest. There ``shortest_float_text`` finds PostgreSQL 12's text in
SQL (see its docstring), so every job and every server version writes the same cell, byte for byte.
"""
from __future__ import annotations

from collections.abc import Callable

from psycopg2 import sql

from widen.core import typed, values
from widen.pg.server import Server

#: a server that prints shortest floats: what statements assume unless told the source's version
NEWEST = Server(180000)
#: a server that does not: text that must be right whatever the reading session's
#: ``extra_float_digits`` (a view's) is built as for it
OLDEST_PRINTER = Server(110000)


def _columns(alias: str | None):
    """A function naming a source column, qualified by ``alias`` when one is given."""
    def col(name: str) -> sql.Composable:
        return sql.Identifier(alias, name) if alias else sql.Identifier(name)
    return col


def rendered_value(alias: str | None = None, server: Server = NEWEST, double_type: str = "float8",
                   any_session: bool = False, otherwise: sql.Composable | None = None) -> sql.Composable:
    """``CASE value_format WHEN 'Decimal' THEN double_v::text … END`` (optionally qualified), on
    ``server`` whose ``double_v`` is of ``double_type`` (float8 or float4). ``any_session``: the
    same text whatever the reading session's ``extra_float_digits`` (for a view, whose readers'
    sessions widen does not set). ``otherwise``: the value for any other format (NULL by default)."""
    col = _columns(alias)
    double = (sql.SQL("{}::text").format(col("double_v")) if server.shortest_floats and not any_session
              else shortest_float_text(col("double_v"), double_type))
    return sql.SQL(
        "CASE {fmt} WHEN 'Decimal' THEN {d} WHEN 'Integer' THEN {l}::text "
        "WHEN 'String' THEN {s} WHEN 'Boolean' THEN {b}::text{otherwise} END"
    ).format(fmt=col("value_format"), d=double, l=col("long_v"), s=col("str_v"), b=col("bool_v"),
             otherwise=sql.SQL(" ELSE {}").format(otherwise) if otherwise is not None else sql.SQL(""))


#: per type: (digits printed as ``%.Ng`` by a cast to numeric, most digits ever needed, smallest
#: normal value, from where consecutive values are integers at least 2 apart, the decimal exponent
#: from which PostgreSQL 12 prints in scientific notation, the smallest decimal that overflows:
#: the largest value plus half its spacing)
_FLOATS = {
    "float8": (15, 17, "2.2250738585072014e-308", "9007199254740992", 15, str(2 ** 1024 - 2 ** 970)),
    "float4": (6, 9, "1.17549435e-38", "16777216", 6, str(2 ** 128 - 2 ** 103)),
}


def _digits(x: sql.Composable, n: int) -> sql.Composable:
    """``x`` correctly rounded to ``n`` significant digits, as ``d.ddde±XX`` (glibc's ``%+.{n-1}e``
    through ``to_char``, whose scientific form is not capped at 15 digits)."""
    return sql.SQL("to_char({}, {})").format(x, sql.Literal("9" + ("." + "9" * (n - 1) if n > 1 else "") + "EEEE"))


def shortest_float_text(x: sql.Composable, kind: str = "float8") -> sql.Composable:
    """What PostgreSQL 12+ prints for the ``float8`` (or ``float4``) ``x``, on any server from 9.3.

    PostgreSQL 12 prints the shortest digits that read back to the same value and lie strictly
    inside its rounding interval (Ryu), in fixed notation for decimal exponents -4 … 14 (float4:
    … 5), else as ``d.ddde±XX``; ``NaN``, ``Infinity``, ``-Infinity``, ``0``, ``-0`` as such.

    - Fast path, nearly every reading: ``x::numeric`` is ``%.15g`` (float4: ``%.6g``) of ``x``. When
      that reads back to ``x`` it is the shortest text: the rounding interval of a normal double is
      narrower than the spacing of 15-digit decimals, so it holds at most one of them, and no
      15-digit decimal below 1e15 is the midpoint of two doubles (it would need 54 bits).
    - Otherwise the shortest of ``x`` correctly rounded to 16 and 17 digits (float4: 7 … 9) that
      reads back; an integer candidate at |x| ≥ 2^53 must also survive ±0.5 (else it is the midpoint
      Ryu refuses). Subnormal values try every length from 1.
    - The chosen ``d.ddde±XX`` is printed in PostgreSQL 12's notation.
    Checked against a PostgreSQL 18 server, value by value, in tests/test_old_servers.py.
    """
    fast, longest, normal, wide, scientific_from, overflow = _FLOATS[kind]
    t = sql.SQL(kind)

    def in_range(candidate: sql.Composable, test: sql.Composable) -> sql.Composable:
        """``test``, or false for a candidate rounded up past the largest value (its cast would
        raise "out of range"; a CASE, as AND does not promise to evaluate left to right)."""
        return sql.SQL("CASE WHEN abs({c}::numeric) >= {overflow} THEN false ELSE {test} END").format(
            c=candidate, overflow=sql.Literal(overflow), test=test)

    def reads_back(candidate: sql.Composable) -> sql.Composable:
        return in_range(candidate, sql.SQL(
            "({c}::{t} = {x} AND (abs({x}) < {wide}::{t} OR "
            "(({c}::numeric + 0.5)::{t} = {x} AND ({c}::numeric - 0.5)::{t} = {x})))").format(
            c=candidate, t=t, x=x, wide=sql.Literal(wide)))

    def first(lengths: range, test: Callable[[sql.Composable], sql.Composable]) -> sql.Composable:
        return sql.SQL("CASE {} ELSE {} END").format(
            sql.SQL(" ").join(sql.SQL("WHEN {} THEN {}").format(test(_digits(x, n)), _digits(x, n)) for n in lengths),
            _digits(x, longest))

    chosen = sql.SQL("(CASE WHEN abs({x}) < {normal}::{t} THEN {sub} ELSE {norm} END)").format(
        x=x, normal=sql.Literal(normal), t=t,
        sub=first(range(1, longest), lambda c: in_range(c, sql.SQL("{}::{} = {}").format(c, t, x))),
        norm=first(range(fast, longest), reads_back))
    fixed = sql.SQL("({})::numeric::text").format(chosen)
    # no backslash and no percent sign: right whatever standard_conforming_strings says, and
    # whether or not psycopg2 %-formats the statement
    printed = sql.SQL(
        "CASE WHEN split_part({c}, 'e', 2)::int NOT BETWEEN -4 AND {last_fixed} "
        "THEN regexp_replace(btrim({c}), '[.]?0+e', 'e') "
        "WHEN strpos({f}, '.') > 0 THEN rtrim(rtrim({f}, '0'), '.') ELSE {f} END").format(
        c=chosen, f=fixed, last_fixed=sql.Literal(scientific_from - 1))
    return sql.SQL(
        "CASE WHEN {x} IS NULL THEN NULL "
        "WHEN {x} = 0 OR {x} = 'NaN' OR {x} = 'Infinity' OR {x} = '-Infinity' THEN {x}::text "
        "WHEN abs({x}) >= '1e-4'::{t} AND abs({x}) < {top}::{t} AND {x}::numeric::{t} = {x} THEN {x}::numeric::text "
        "ELSE {printed} END").format(x=x, t=t, top=sql.Literal(f"1e{scientific_from}"), printed=printed)


def typed_text(x: sql.Composable, column_type: str, server: Server = NEWEST) -> sql.Composable:
    """A wide column's value as the source printed it (``core.typed``): a typed value back to its
    text, exactly (doubles in PostgreSQL 12's shortest form on any target server)."""
    if column_type == typed.TEXT:
        return x
    if column_type == typed.DOUBLE and not server.shortest_floats:
        return shortest_float_text(x)
    if column_type not in typed.COLUMN_TYPES:
        raise ValueError(f"unknown column type {column_type!r}")
    return sql.SQL("{}::text").format(x)


def column_type(column_type: str) -> sql.Composable:
    """The SQL of a wide column's type (one of ``core.typed.COLUMN_TYPES``, never anything else)."""
    if column_type not in typed.COLUMN_TYPES:
        raise ValueError(f"unknown column type {column_type!r}")
    return sql.SQL(column_type)


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
