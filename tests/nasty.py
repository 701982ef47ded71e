"""Hand-made hostile rows added to a generated fleet in the integration tests."""
from __future__ import annotations

import datetime as dt

from psycopg2 import sql
from psycopg2.extensions import AsIs
from psycopg2.extras import execute_values

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, 0, 0, tzinfo=UTC)

S_SPACES = "ship with spaces"
S_QUOTES = "o'reilly \"quoted\" ship"
S_SQL = "x'); DROP TABLE tbl_data_timeseries; --"
S_LONG = "船舶-" * 12                     # 84 bytes: the table name gets the md5 suffix
S_DOTS = "Ship.With.Dots"
LONG_PREFIX = "/dnv-v2/vis-3-4a/411.1/C101.63/S206/meta/qty-temperature/cnt-exhaust.gas/"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def rows() -> list[tuple]:
    """(ship_id, data_channel_id, created_time, value_format, double_v, long_v, str_v, bool_v)"""
    out: list[tuple] = []

    def add(ship, channel, when, fmt, d=None, n=None, s=None, b=None):
        out.append((ship, channel, when, fmt, d, n, s, b))

    # Floating point that Java/Python would print differently from PostgreSQL.
    for i, value in enumerate([float("nan"), float("inf"), float("-inf"), -0.0, 1e300, 5e-324,
                               0.1 + 0.2, 843.0, 1.88e8, 5.1e-4, None]):
        add(S_SPACES, "decimal", at(15 * i), "Decimal", d=value)
    for i, value in enumerate([9223372036854775807, -9223372036854775808, 0, None]):
        add(S_SPACES, "integer", at(15 * i), "Integer", n=value)
    for i, value in enumerate(["tab\there", "new\nline", "carriage\rreturn", "back\\slash", "\\N",
                               "comma,separated", 'double "quotes"', "single 'quotes'", "",
                               "ünïcödé 船舶 ✓", None, "\\.", "trailing backslash\\"]):
        add(S_QUOTES, "string", at(15 * i), "String", s=value)
    for i, value in enumerate([True, False, None]):
        add(S_QUOTES, "boolean", at(15 * i), "Boolean", b=value)
    # Channel names that are hard identifiers.
    add(S_SQL, "created_time", at(0), "Decimal", d=1.0)
    add(S_SQL, "UPPER", at(0), "Integer", n=1)
    add(S_SQL, "upper", at(0), "Integer", n=2)
    add(S_SQL, LONG_PREFIX + "pos-inlet", at(0), "Decimal", d=10.5)
    add(S_SQL, LONG_PREFIX + "pos-outlet", at(0), "Decimal", d=20.5)
    add(S_SQL, 'quo"te\'s; DROP', at(15), "String", s="x")
    add(S_SQL, "dotted.channel.name", at(15), "Boolean", b=True)
    add(S_LONG, "채널/온도", at(0), "Decimal", d=36.6)
    add(S_LONG, "채널/온도" * 8, at(0), "Decimal", d=37.5)
    # Duplicates: greatest by byte order wins, a value beats NULL.
    add(S_DOTS, "dup", at(0), "String", s="a")
    add(S_DOTS, "dup", at(0), "String", s="b")
    add(S_DOTS, "dup", at(15), "String", s=None)
    add(S_DOTS, "dup", at(15), "String", s="x")
    add(S_DOTS, "dup", at(30), "String", s="z")
    add(S_DOTS, "dup", at(30), "String", s="é")
    add(S_DOTS, "dupnum", at(0), "Decimal", d=9.0)
    add(S_DOTS, "dupnum", at(0), "Decimal", d=10.0)
    add(S_DOTS, "allnull", at(0), "Decimal", d=None)
    add(S_DOTS, "allnull", at(0), "Decimal", d=None)
    # The same instant written with different UTC offsets is one key.
    add(S_DOTS, "tz", dt.datetime(2026, 1, 1, 5, 0, tzinfo=dt.timezone(dt.timedelta(hours=5))), "String",
        s="written at +05")
    add(S_DOTS, "tz", T0, "String", s="written at UTC")
    add(S_DOTS, "tz2", dt.datetime(2025, 12, 31, 19, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        "Integer", n=-5)
    # Microseconds are kept.
    add(S_DOTS, "micro", at(0.000001), "Integer", n=1)
    add(S_DOTS, "micro", at(0.999999), "Integer", n=2)
    add(S_DOTS, "micro", at(3599.999999), "Integer", n=3)     # last microsecond of the first chunk
    add(S_DOTS, "micro", at(3600), "Integer", n=4)            # first of the next chunk
    # Rejected rows: unknown or NULL format, NULL or empty channel, NULL ship, NULL time.
    add(S_SPACES, "decimal", at(600), "Float", d=1.0)
    add(S_SPACES, "decimal", at(615), "decimal", d=2.0)
    add(S_SPACES, "decimal", at(630), None, d=3.0)
    add(S_SPACES, None, at(645), "Decimal", d=4.0)
    add(S_SPACES, "", at(660), "String", s="empty channel")
    add(None, "decimal", at(675), "Decimal", d=5.0)
    add(S_SPACES, "decimal", None, "Decimal", d=6.0)
    add(S_QUOTES, "string", None, "String", s="no time\tat all")
    return out


def _float8(value: float) -> AsIs:
    """A double as a float8 literal: psycopg2's own ``-0.0`` is numeric negation in SQL and
    arrives as 0, so -0 would never reach the table."""
    return AsIs(f"'{value!r}'::float8")


def insert(conn, schema: str, data: list[tuple] | None = None) -> None:
    data = [tuple(_float8(v) if isinstance(v, float) else v for v in row)
            for row in (data if data is not None else rows())]
    with conn.cursor() as cur:
        execute_values(cur, sql.SQL(
            "INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, double_v, long_v, "
            "str_v, bool_v) VALUES %s").format(sql.Identifier(schema, "tbl_data_timeseries")).as_string(cur),
            data)


def minute(ship: str, minute_no: int, channels: list[str]) -> list[tuple]:
    """Four readings per channel in one minute, each channel its own format."""
    out = []
    for i, channel in enumerate(channels):
        for k in range(4):
            when = at(60 * minute_no + 15 * k)
            fmt = ["Decimal", "Integer", "String", "Boolean"][i % 4]
            out.append((ship, channel, when, fmt, (k + 0.1) * 3 if fmt == "Decimal" else None,
                        k - 2 if fmt == "Integer" else None, f"s\t{k}\\" if fmt == "String" else None,
                        k % 2 == 0 if fmt == "Boolean" else None))
    return out
