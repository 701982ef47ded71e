"""Synthetic fleet: realistic narrow telemetry generated inside PostgreSQL.

N ships, channels named like ISO 19848 data channel ids (some longer than 63 bytes), the four value
formats in realistic shares (Decimal 70 %, Integer 15 %, String 10 %, Boolean 5 %), one reading per
channel every 15 seconds. Rows are made by ``INSERT … SELECT`` over ``generate_series`` on two
connections at once, so nothing crosses the wire but the channel list.
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from psycopg2 import sql
from psycopg2.extras import execute_values

from widen.config import Connection
from widen.pg import db

if TYPE_CHECKING:
    from psycopg2.extensions import connection, cursor

log = logging.getLogger(__name__)

NARROW_DDL = """CREATE TABLE IF NOT EXISTS {t} (
    ship_id text, data_channel_id text, created_time timestamptz, value_format text,
    double_v double precision, long_v bigint, str_v text, bool_v boolean)"""

_SYSTEMS = ["411.1/C101.31", "411.1/C101.63/S206", "511.11/C101", "621.21/S90", "1036/C231",
            "434.1/C501.2", "511.31/C221.3", "651/S41.1", "322/C211.1", "461.2/C101.11"]
_QUANTITIES = ["temperature", "pressure", "revolution", "flow", "level", "voltage", "current",
               "power", "frequency", "position", "density", "viscosity"]
_CONTENTS = ["exhaust.gas", "lubricating.oil", "fuel.oil", "cooling.water", "charge.air", "sea.water",
             "hydraulic.oil", "steam"]
_POSITIONS = ["inlet", "outlet", "port", "starboard", "upper", "lower", "fore", "aft"]
_DETAILS = ["average", "maximum", "minimum", "cylinder.1", "cylinder.2", "turbocharger.1"]
FORMAT_SHARES = (("Decimal", 0.70), ("Integer", 0.15), ("String", 0.10), ("Boolean", 0.05))


#: the COMMENT ON TABLE that marks a narrow table ``generate`` made (and so may empty again)
MADE_BY_GENERATE = "widen generate: a synthetic fleet (may be replaced by generate --replace)"


class FleetExists(ValueError):
    """The narrow table already has rows and the caller did not ask to replace them (or asked to
    replace a table that ``generate`` did not make)."""


def channel_names(count: int, seed: int = 7) -> list[tuple[str, str]]:
    """``count`` distinct (data_channel_id, value_format) pairs, about a fifth longer than 63 bytes."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    while len(out) < count:
        system = rng.choice(_SYSTEMS)
        parts = [f"/dnv-v2/vis-3-4a/{system}/meta/qty-{rng.choice(_QUANTITIES)}"]
        if rng.random() < 0.5:
            parts.append(f"cnt-{rng.choice(_CONTENTS)}")
        if rng.random() < 0.4:
            parts.append(f"pos-{rng.choice(_POSITIONS)}")
        if rng.random() < 0.3:
            parts.append(f"detail-{rng.choice(_DETAILS)}")
        name = "/".join(parts)
        if name in seen:
            name = f"{name}/detail-{len(out)}"
        seen.add(name)
        r, fmt = rng.random(), "Decimal"
        for candidate, share in FORMAT_SHARES:
            if r < share:
                fmt = candidate
                break
            r -= share
        out.append((name, fmt))
    return out


def ship_ids(count: int) -> list[str]:
    return [f"IMO{9300001 + i * 17}" for i in range(count)]


def ensure_narrow_table(conn: connection, schema: str, table: str) -> bool:
    """Create the narrow table (marked as made by generate) unless it exists; True when it did not."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        cur.execute("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s", (schema, table))
        created = cur.fetchone() is None
        if created:
            cur.execute(sql.SQL(NARROW_DDL).format(t=sql.Identifier(schema, table)))
            cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(sql.Identifier(schema, table)),
                        (MADE_BY_GENERATE,))
    conn.commit()
    return created


def made_by_generate(cur: cursor, schema: str, table: str) -> bool:
    cur.execute("SELECT obj_description(c.oid, 'pg_class') FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", (schema, table))
    row = cur.fetchone()
    return bool(row) and row[0] == MADE_BY_GENERATE


def _insert_ship(conn_cfg: Connection, schema: str, table: str, ship: str, seed: int,
                 channels: list[tuple[str, str]], start: dt.datetime, end: dt.datetime,
                 cadence_seconds: int) -> int:
    with db.connection(conn_cfg) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE gen_channels (idx int, name text, fmt text) ON COMMIT DROP")
        execute_values(cur, "INSERT INTO gen_channels VALUES %s",
                       [(i, name, fmt) for i, (name, fmt) in enumerate(channels)])
        cur.execute("SELECT setseed(%s)", ((zlib.crc32(f"{seed}/{ship}".encode()) % 2000000) / 1000000.0 - 1.0,))
        cur.execute(sql.SQL("""
            INSERT INTO {t} (ship_id, data_channel_id, created_time, value_format, double_v, long_v,
                             str_v, bool_v)
            SELECT %(ship)s, c.name, ts, c.fmt,
                   CASE WHEN c.fmt = 'Decimal' THEN
                        CASE WHEN c.idx %% 7 = 0 THEN round(random() * 1000)::float8
                             WHEN c.idx %% 11 = 0 THEN (random() * 1e-3)::float8
                             WHEN c.idx %% 13 = 0 THEN round((random() * 2e8)::numeric, 1)::float8
                             ELSE round((random() * 1000)::numeric, 3)::float8 END END,
                   CASE WHEN c.fmt = 'Integer' THEN (random() * 100000)::bigint - 50000 END,
                   CASE WHEN c.fmt = 'String' THEN
                        (ARRAY['RUNNING', 'STOPPED', 'STAND BY', 'ALARM: HIGH TEMP', 'MAINTENANCE'])
                        [1 + floor(random() * 5)::int] END,
                   CASE WHEN c.fmt = 'Boolean' THEN random() < 0.5 END
            FROM generate_series(%(start)s::timestamptz, %(last)s::timestamptz,
                                 %(cadence)s * interval '1 second') AS ts
            CROSS JOIN gen_channels c""").format(t=sql.Identifier(schema, table)),
            {"ship": ship, "start": start, "last": end - dt.timedelta(microseconds=1),
             "cadence": cadence_seconds})
        rows = cur.rowcount
        conn.commit()
        return rows


def generate_fleet(conn_cfg: Connection, schema: str = "tenant", table: str = "tbl_data_timeseries",
                   ships: int = 4, channels: int = 50, start: dt.datetime | None = None,
                   hours: float = 6.0, cadence_seconds: int = 15, seed: int = 7,
                   replace: bool = False, parallel: int = 2, ship_list: list[str] | None = None,
                   replace_any_table: bool = False) -> dict:
    """Fill the narrow table; returns {"rows", "ships", "channels", "seconds", "start", "end"}.

    ``replace`` empties the table first, but only one that generate made (its table comment says
    so); ``replace_any_table`` empties whatever table it is (a loud, explicit override)."""
    began = time.monotonic()
    start = start or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    end = start + dt.timedelta(hours=hours)
    ship_list = ship_list or ship_ids(ships)
    chans = channel_names(channels, seed)
    with db.connection(conn_cfg) as conn:
        ensure_narrow_table(conn, schema, table)
        with conn.cursor() as cur:
            if replace and not made_by_generate(cur, schema, table) and not replace_any_table:
                cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(schema, table)))
                if cur.fetchone()[0]:
                    raise FleetExists(f"{schema}.{table} was not made by generate; --replace empties only a "
                                      "table generate made. It may be real telemetry: point source.schema/"
                                      "source.table elsewhere, or pass --replace-any-table to empty it anyway")
            if replace:
                if replace_any_table and not made_by_generate(cur, schema, table):
                    log.warning("emptying %s.%s although generate did not make it (--replace-any-table)",
                                schema, table)
                cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(schema, table)))
            else:
                cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(schema, table)))
                if cur.fetchone()[0]:
                    raise FleetExists(f"{schema}.{table} already holds rows; generating a fleet would "
                                      "mix with them (pass replace=True / --replace to empty it first)")
            cur.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(
                sql.Identifier(schema, f"{table}_ship_time")))
        conn.commit()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        rows = sum(pool.map(lambda s: _insert_ship(conn_cfg, schema, table, s, seed, chans, start, end,
                                                   cadence_seconds), ship_list))
    with db.connection(conn_cfg) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (ship_id, created_time)").format(
            sql.Identifier(f"{table}_ship_time"), sql.Identifier(schema, table)))
        cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))
        conn.commit()
    return {"rows": rows, "ships": len(ship_list), "channels": len(chans),
            "seconds": round(time.monotonic() - began, 2), "start": start, "end": end}


def latest_channels(conn_cfg: Connection, schema: str, table: str) -> list[tuple[str, str, str]]:
    """(ship, channel, format) of the readings at the newest created_time (the demo's live minute)."""
    narrow = sql.Identifier(schema, table)
    with db.connection(conn_cfg) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, data_channel_id, value_format FROM {t} WHERE created_time = "
                            "(SELECT max(created_time) FROM {t})").format(t=narrow))
        return cur.fetchall()


def insert_readings(conn_cfg: Connection, schema: str, table: str, readings: list[tuple]) -> None:
    """Append narrow rows (ship_id, data_channel_id, created_time, value_format, double_v, long_v,
    str_v, bool_v) in one transaction."""
    with db.connection(conn_cfg) as conn, conn.cursor() as cur:
        db.execute_values(cur, sql.SQL("INSERT INTO {} (ship_id, data_channel_id, created_time, value_format, "
                                       "double_v, long_v, str_v, bool_v) VALUES %s").format(
            sql.Identifier(schema, table)), readings)
        conn.commit()
