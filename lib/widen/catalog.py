"""Catalog and ledger tables in the target database (DESIGN.md, "Catalog and ledger").

``wide_tables`` and ``channel_columns`` say where every channel of every ship lives;
``backfill_chunks`` and ``stream_batches`` are the ledgers that make writes exactly-once; ``rejects``
keeps every row that could not be pivoted. Columns are part of the contract: tools outside the
project read them.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from psycopg2 import sql

from widen import db, naming

# Row layout overheads used to estimate a wide row's size (PostgreSQL heap tuple).
TUPLE_HEADER_BYTES = 24
TIMESTAMP_BYTES = 8
#: a text value longer than this is stored out of line (TOAST) and costs only a pointer
TOAST_INLINE_LIMIT = 2000
TOAST_POINTER_BYTES = 18
DEFAULT_VALUE_BYTES = 16.0

_DDL = [
    """CREATE TABLE IF NOT EXISTS {s}.wide_tables (
        ship_id text NOT NULL, part integer NOT NULL, table_schema text NOT NULL,
        table_name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (ship_id, part), UNIQUE (table_schema, table_name))""",
    # Additive: why a table does not have its natural name (a collision resolved by the rule in
    # naming.TableNamer), NULL when it does.
    "ALTER TABLE {s}.wide_tables ADD COLUMN IF NOT EXISTS name_note text",
    """CREATE TABLE IF NOT EXISTS {s}.channel_columns (
        ship_id text NOT NULL, data_channel_id text NOT NULL, table_name text NOT NULL,
        column_name text NOT NULL, value_format text, first_seen timestamptz NOT NULL DEFAULT now(),
        avg_bytes real, PRIMARY KEY (ship_id, data_channel_id), UNIQUE (table_name, column_name))""",
    """CREATE TABLE IF NOT EXISTS {s}.backfill_chunks (
        ship_id text NOT NULL, range_start timestamptz NOT NULL, range_end timestamptz NOT NULL,
        status text NOT NULL, narrow_rows bigint, wide_rows bigint, attempts integer NOT NULL DEFAULT 0,
        started_at timestamptz, finished_at timestamptz, rejected_rows bigint, duplicate_rows bigint,
        error text, PRIMARY KEY (ship_id, range_start, range_end))""",
    """CREATE TABLE IF NOT EXISTS {s}.stream_batches (
        query_name text NOT NULL, batch_id bigint NOT NULL, narrow_rows bigint, wide_rows bigint,
        ships integer, committed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (query_name, batch_id))""",
    # Additive: rows dropped behind the watermark (filled in when Spark reports the batch) and the
    # newest created_time the batch merged (freshness).
    "ALTER TABLE {s}.stream_batches ADD COLUMN IF NOT EXISTS late_rows bigint",
    "ALTER TABLE {s}.stream_batches ADD COLUMN IF NOT EXISTS newest_created_time timestamptz",
    """CREATE TABLE IF NOT EXISTS {s}.stream_failures (
        query_name text NOT NULL, batch_id bigint NOT NULL, ship_id text NOT NULL, narrow_rows bigint,
        first_created_time timestamptz, last_created_time timestamptz, error text,
        failed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (query_name, batch_id, ship_id))""",
    # A ship an operator rolled back: every writer skips it until `resume` (DESIGN: lifecycle).
    """CREATE TABLE IF NOT EXISTS {s}.ship_states (
        ship_id text PRIMARY KEY, state text NOT NULL, since timestamptz NOT NULL DEFAULT now(), detail text)""",
    # The first offset of each stream query, recorded before it is logged: a restart before the
    # first batch commits reuses it, so the hand-off point cannot move.
    """CREATE TABLE IF NOT EXISTS {s}.stream_starts (
        query_name text NOT NULL, checkpoint text NOT NULL, start_offset text NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (query_name, checkpoint))""",
    """CREATE TABLE IF NOT EXISTS {s}.rejects (
        ship_id text, data_channel_id text, created_time timestamptz, value_format text,
        double_v double precision, long_v bigint, str_v text, bool_v boolean,
        reason text NOT NULL, job text NOT NULL, batch text, seen_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX IF NOT EXISTS rejects_job_batch ON {s}.rejects (job, batch)",
    """CREATE TABLE IF NOT EXISTS {s}.reconcile_results (
        run_id text NOT NULL, ship_id text NOT NULL, bucket_start timestamptz NOT NULL,
        bucket_end timestamptz, source_times bigint, target_times bigint, source_cells bigint,
        target_cells bigint, source_checksum bigint, target_checksum bigint, status text NOT NULL,
        checked_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run_id, ship_id, bucket_start))""",
]


def ensure_catalog(conn, catalog_schema: str) -> None:
    """Create the catalog schema and tables when missing (idempotent, commits)."""
    s = sql.Identifier(catalog_schema)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('widen.ensure_catalog'))")
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
        for statement in _DDL:
            cur.execute(sql.SQL(statement).format(s=s))
    conn.commit()


@dataclass
class ChannelColumn:
    data_channel_id: str
    column_name: str
    part: int
    value_format: str | None = None
    avg_bytes: float = DEFAULT_VALUE_BYTES


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


def value_bytes(avg_bytes: float | None) -> float:
    """Estimated heap bytes of one text value of the given average length."""
    length = DEFAULT_VALUE_BYTES if avg_bytes is None else float(avg_bytes)
    if length > TOAST_INLINE_LIMIT:
        return TOAST_POINTER_BYTES
    return length + (1 if length < 127 else 4)


def estimated_row_bytes(channels: list[ChannelColumn]) -> float:
    null_bitmap = (len(channels) + 1 + 7) // 8
    return TUPLE_HEADER_BYTES + null_bitmap + TIMESTAMP_BYTES + sum(value_bytes(c.avg_bytes)
                                                                   for c in channels)


class LayoutError(ValueError):
    pass


def assign_channels(layout: ShipLayout, new: dict[str, tuple[str | None, float | None]],
                    namer, max_columns: int, max_row_bytes: float,
                    fold_case: bool = False) -> list[ChannelColumn]:
    """Place channels not yet in ``layout`` (channel -> (format, avg bytes)); returns those added.

    Existing channels never move. New ones go to the last part while it stays under both
    ``max_columns`` and ``max_row_bytes``, else to a new part table (``_p2``, ``_p3`` …) named by
    ``namer(ship_id, part)`` (a ``naming.TableNamer``: unique across the fleet).
    With ``fold_case`` (Delta: column names are unique regardless of case) a channel whose column
    differs from one in the last part only by case goes to a new part, under its own name.
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
        fmt, avg = new[channel]
        column = naming.column_name(channel)
        candidate = ChannelColumn(channel, column, 0, fmt,
                                  DEFAULT_VALUE_BYTES if avg is None else float(avg))
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


def grow_layout(layout: ShipLayout, new: dict[str, tuple[str | None, float | None]],
                target, namer=None) -> list[ChannelColumn]:
    """``assign_channels`` with the limits of the configured target (a ``TargetConfig``); new
    tables named by ``namer`` (default: the natural names, without looking at the fleet)."""
    return assign_channels(layout, new, namer or naming.TableNamer(target.wide_table_template),
                           target.max_columns_per_table, target.row_byte_limit, fold_case=target.is_delta)


def storage_key(target):
    """How the target tells two table names apart: PostgreSQL by the name itself, Delta by the
    directory (or metastore name) the name maps to."""
    if not target.is_delta:
        return lambda name: name
    if target.delta_root:
        return naming.delta_dir_name
    return lambda name: naming.delta_dir_name(name, lower=True)


def lock_table_names(cur, session: bool = False) -> None:
    """Serialise the choice of new table names across processes (to the transaction's end, or
    with ``session`` until ``unlock_table_names``)."""
    cur.execute(f"SELECT {'pg_advisory_lock' if session else 'pg_advisory_xact_lock'}"
                "(hashtext('widen.table_names'))")


def unlock_table_names(cur) -> None:
    cur.execute("SELECT pg_advisory_unlock(hashtext('widen.table_names'))")


def fleet_namer(conn, target, reserved_ships=()) -> naming.TableNamer:
    """A ``TableNamer`` that knows every table the catalog has given out (call it holding
    ``lock_table_names``)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, part, table_name FROM {}").format(
            sql.Identifier(target.catalog_schema, "wide_tables")))
        rows = cur.fetchall()
    key = storage_key(target)
    return naming.TableNamer(target.wide_table_template, {key(t): (s, p) for s, p, t in rows},
                             reserved_ships, key)


class LazyFleetNamer:
    """A ``fleet_namer`` made on first use, under the transaction-level names lock: a layout that
    needs no new table costs nothing."""

    def __init__(self, conn, target):
        self.conn, self.target = conn, target
        self._namer: naming.TableNamer | None = None

    @property
    def notes(self) -> dict:
        return self._namer.notes if self._namer else {}

    def __call__(self, ship_id: str, part: int) -> str:
        if self._namer is None:
            with self.conn.cursor() as cur:
                lock_table_names(cur)
            self._namer = fleet_namer(self.conn, self.target)
        return self._namer(ship_id, part)


def record_layout(conn, target, layout: ShipLayout) -> None:
    """``save_layout`` for the configured target (a ``TargetConfig``)."""
    save_layout(conn, target.catalog_schema, target.wide_location, layout)


ROLLED_BACK = "rolled_back"


def lock_ship_for_write(cur, catalog_schema: str, ship_id: str) -> bool:
    """Take the ship's write lock (shared: writers do not exclude each other) to the end of the
    transaction; False when the ship is rolled back, so the writer must leave it alone."""
    cur.execute("SELECT pg_advisory_xact_lock_shared(hashtext('widen.ship'), hashtext(%s))", (ship_id,))
    cur.execute(sql.SQL("SELECT state FROM {} WHERE ship_id = %s").format(
        sql.Identifier(catalog_schema, "ship_states")), (ship_id,))
    row = cur.fetchone()
    return not (row and row[0] == ROLLED_BACK)


def lock_ship_exclusive(cur, ship_id: str) -> None:
    """Wait until no writer is inside a transaction on the ship, and keep new ones out until this
    transaction ends (rollback)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('widen.ship'), hashtext(%s))", (ship_id,))


def set_ship_state(cur, catalog_schema: str, ship_id: str, state: str | None, detail: str | None = None) -> None:
    """Record the ship's state (None: forget it, the ship is back to normal)."""
    table = sql.Identifier(catalog_schema, "ship_states")
    if state is None:
        cur.execute(sql.SQL("DELETE FROM {} WHERE ship_id = %s").format(table), (ship_id,))
        return
    cur.execute(sql.SQL("INSERT INTO {} (ship_id, state, detail) VALUES (%s, %s, %s) ON CONFLICT (ship_id) "
                        "DO UPDATE SET state = EXCLUDED.state, since = now(), detail = EXCLUDED.detail").format(table),
                (ship_id, state, detail))


def ships_in_state(conn, catalog_schema: str, state: str) -> set[str]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id FROM {} WHERE state = %s").format(
            sql.Identifier(catalog_schema, "ship_states")), (state,))
        return {r[0] for r in cur.fetchall()}


def ensure_tables_ddl(conn, target, layout: "ShipLayout", what: str, max_wait: float | None = None) -> int:
    """``ensure_wide_tables`` as DDL of its own (``db.run_ddl``: short lock timeout, retried),
    under the ship's write lock; returns the statements run (0 for a rolled-back ship)."""
    def ddl(cur) -> int:
        if not lock_ship_for_write(cur, target.catalog_schema, layout.ship_id):
            return 0
        return ensure_wide_tables(conn, target.schema, layout)

    return db.run_ddl(conn, target, ddl, [(target.schema, t) for t in layout.tables.values()], what, max_wait)


def lock_layout(cur, ship_id: str) -> None:
    """Serialise changes to one ship's layout across processes, until the transaction ends."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('widen.layout'), hashtext(%s))", (ship_id,))


def extend_layout(conn, target, ship_id: str, new: dict[str, tuple[str | None, float | None]]) -> ShipLayout:
    """Under the ship's layout lock (held to the end of the caller's transaction): its recorded
    layout with the channels of ``new`` placed (``grow_layout``) and recorded."""
    with conn.cursor() as cur:
        lock_layout(cur, ship_id)
    layout = load_layout(conn, target.catalog_schema, ship_id)
    grow_layout(layout, new, target, LazyFleetNamer(conn, target))
    record_layout(conn, target, layout)
    return layout


def load_layout(conn, catalog_schema: str, ship_id: str) -> ShipLayout:
    s = sql.Identifier(catalog_schema)
    layout = ShipLayout(ship_id)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT part, table_name FROM {s}.wide_tables WHERE ship_id = %s")
                    .format(s=s), (ship_id,))
        for part, table in cur.fetchall():
            layout.tables[part] = table
        part_of_table = {t: p for p, t in layout.tables.items()}
        cur.execute(sql.SQL("SELECT data_channel_id, column_name, table_name, value_format, avg_bytes "
                            "FROM {s}.channel_columns WHERE ship_id = %s").format(s=s), (ship_id,))
        for channel, column, table, fmt, avg in cur.fetchall():
            layout.channels[channel] = ChannelColumn(channel, column, part_of_table[table], fmt,
                                                     DEFAULT_VALUE_BYTES if avg is None else avg)
    return layout


def save_layout(conn, catalog_schema: str, target_schema: str, layout: ShipLayout) -> None:
    """Record the layout's tables and channels (existing rows are kept as they are)."""
    s = sql.Identifier(catalog_schema)
    with conn.cursor() as cur:
        for part, table in layout.tables.items():
            cur.execute(sql.SQL("INSERT INTO {s}.wide_tables (ship_id, part, table_schema, table_name, "
                                "name_note) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (ship_id, part) DO NOTHING")
                        .format(s=s), (layout.ship_id, part, target_schema, table, layout.notes.get(part)))
        rows = [(layout.ship_id, c.data_channel_id, layout.tables[c.part], c.column_name,
                 c.value_format, c.avg_bytes) for c in layout.channels.values()]
        if rows:
            db.execute_values(cur, sql.SQL(
                "INSERT INTO {s}.channel_columns (ship_id, data_channel_id, table_name, column_name, "
                "value_format, avg_bytes) VALUES %s ON CONFLICT (ship_id, data_channel_id) DO NOTHING")
                .format(s=s), rows)


def ensure_wide_tables(conn, target_schema: str, layout: ShipLayout) -> int:
    """Create missing wide tables and columns, with COMMENTs naming ship and channel.

    Runs inside the caller's transaction. Only missing objects are touched, so a chunk that brings
    no new channel takes no exclusive lock. Returns the number of DDL statements run.
    """
    statements = 0
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(target_schema)))
        for part in layout.parts:
            table = layout.tables[part]
            ident = sql.Identifier(target_schema, table)
            cur.execute("SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND "
                        "c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
                        (target_schema, table))
            existing = {r[0] for r in cur.fetchall()}
            if not existing:
                cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (created_time timestamptz PRIMARY KEY)")
                            .format(ident))
                cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(ident),
                            (f"widen: ship_id={layout.ship_id} part={part}",))
                statements += 2
            for channel in layout.part_channels(part):
                if channel.column_name in existing:
                    continue
                col = sql.Identifier(channel.column_name)
                cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text").format(ident, col))
                cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS %s").format(ident, col),
                            (f"data_channel_id={channel.data_channel_id}",))
                statements += 2
    return statements


# --- ledger -----------------------------------------------------------------------------------

def done_chunks(conn, catalog_schema: str, ship_ids: list[str]) -> set[tuple[str, dt.datetime, dt.datetime]]:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ship_id, range_start, range_end FROM {}.backfill_chunks "
                            "WHERE status = 'done' AND ship_id = ANY(%s)")
                    .format(sql.Identifier(catalog_schema)), (ship_ids,))
        return {(r[0], r[1], r[2]) for r in cur.fetchall()}


def record_chunk(cur, catalog_schema: str, ship_id: str, start: dt.datetime, end: dt.datetime,
                 status: str, attempts: int, started_at: dt.datetime, narrow_rows: int | None = None,
                 wide_rows: int | None = None, rejected: int | None = None,
                 duplicates: int | None = None, error: str | None = None) -> None:
    cur.execute(sql.SQL(
        "INSERT INTO {}.backfill_chunks AS b (ship_id, range_start, range_end, status, narrow_rows, "
        "wide_rows, attempts, started_at, finished_at, rejected_rows, duplicate_rows, error) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now(), %s, %s, %s) "
        "ON CONFLICT (ship_id, range_start, range_end) DO UPDATE SET status = EXCLUDED.status, "
        "narrow_rows = EXCLUDED.narrow_rows, wide_rows = EXCLUDED.wide_rows, "
        "attempts = b.attempts + EXCLUDED.attempts, started_at = EXCLUDED.started_at, "
        "finished_at = EXCLUDED.finished_at, rejected_rows = EXCLUDED.rejected_rows, "
        "duplicate_rows = EXCLUDED.duplicate_rows, error = EXCLUDED.error")
        .format(sql.Identifier(catalog_schema)),
        (ship_id, start, end, status, narrow_rows, wide_rows, attempts, started_at, rejected,
         duplicates, error))
