"""Change data capture: a Structured Streaming source over a logical replication slot (pgoutput).

    source.mode: cdc          (README, "Change data capture")

The stream job creates a publication of the narrow table and a logical replication slot (after the
checks in ``preflight``: nothing is created where the application's writes could fail), records
the slot's consistent point as the query's first offset (the hand-off: every row committed before
it is the backfill's), and reads the slot with ``pg_logical_slot_peek_binary_changes``, which never
consumes anything.

An offset is the end LSN of the last transaction a micro-batch holds; a batch is every transaction
whose commit ends in (start, end], in commit order (a long transaction committing after later ones
comes in the batch of its commit). The slot's confirmed position moves to a batch's end only after
Spark has committed the batch (``commit``), i.e. after the sink's transaction with its ledger row: a
crash anywhere replays from the slot and the checkpoint, and a transaction already in a committed
batch is filtered out by its LSN, so no change is skipped or applied twice.

What a batch holds (``SCHEMA``: the rows of ``values.ROW_COLUMNS`` plus ``change``):

- an INSERT: the new row, rendered and validated in SQL exactly as the other sources do it (the
  text values go back to the server through ``unnest``), ``change`` NULL;
- an UPDATE or DELETE: a ``recompute`` row naming the ship and created_time of the old and the new
  row: the sink re-derives those timestamps from the narrow table's current rows (DESIGN's duplicate
  rule included), so a TOASTed value is never written from a placeholder; an UPDATE's new row is also
  rendered (``change`` = ``update``) so a row made invalid lands in the rejects;
- a TRUNCATE of the narrow table stops the stream with a message (widen never empties wide tables
  because of it).

Admission control: ``max_rows_per_batch`` bounds the changes a batch takes (whole transactions).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows, SupportsTriggerAvailableNow

from widen.config import BadInput, Connection, SourceConfig
from widen.core import values

if TYPE_CHECKING:
    from psycopg2.extensions import connection
    from pyspark.sql.types import StructType

NAME = "widen_cdc"
SCHEMA = values.ROW_SPARK_SCHEMA + ", change string"
#: pgoutput is 10+; a slot is moved on with pg_replication_slot_advance from 11 (10 consumes)
MIN_VERSION = 100000
INSERT, UPDATE, RECOMPUTE = None, "update", "recompute"
INVALIDATED = "was invalidated"
#: the columns of the narrow table a change carries (the order column, if any, is added)
COLUMNS = ("ship_id", "data_channel_id", "created_time", "value_format", "double_v", "long_v", "str_v", "bool_v")
KEY = ("ship_id", "data_channel_id", "created_time")


def default_names(query_name: str) -> str:
    """widen's slot and publication name for a stream query: lower-case letters, digits and
    underscores (what a slot name allows), unique per query name."""
    readable = re.sub(r"[^a-z0-9_]+", "_", query_name.lower()).strip("_")[:40]
    return f"widen_{readable}_{hashlib.md5(query_name.encode()).hexdigest()[:8]}"


def slot_names(cfg: SourceConfig, query_name: str) -> tuple[str, str]:
    """(slot, publication) of a query: ``source.slot`` / ``source.publication`` or widen's default."""
    default = default_names(query_name)
    return cfg.slot or default, cfg.publication or default


# -- checks before anything is created --------------------------------------------------------------

def preflight(conn: connection, cfg: SourceConfig, slot: str, publication: str) -> dict:
    """What ``source.mode: cdc`` needs from the source, checked before widen creates anything;
    ``BadInput`` naming what to run (and why) where it is missing. Returns what exists already
    (``slot``: its row or None, ``publication``: True/False)."""
    from psycopg2 import sql

    from widen.pg.server import version_text

    table = f"{cfg.schema}.{cfg.table}"
    with conn.cursor() as cur:
        if conn.server_version < MIN_VERSION:
            raise BadInput(f"source.mode cdc reads a logical replication slot with pgoutput, which needs PostgreSQL 10 "
                           f"or newer; the source is {version_text(conn.server_version)}: use source.mode poll")
        cur.execute("SELECT current_setting('wal_level'), rolreplication OR rolsuper FROM pg_roles "
                    "WHERE rolname = current_user")
        wal_level, may_replicate = cur.fetchone()
        if wal_level != "logical":
            raise BadInput(f"source.mode cdc needs wal_level = logical on the source (it is {wal_level}): run "
                           "ALTER SYSTEM SET wal_level = logical and restart the server (every slot then keeps "
                           "WAL until it is read: bound it with max_slot_wal_keep_size, README \"Change data "
                           "capture\")")
        if not may_replicate:
            raise BadInput("source.mode cdc: the source role may not read replication slots: ALTER ROLE … "
                           "REPLICATION (or use a role that has it)")
        cur.execute("SELECT c.oid, c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = %s", (cfg.schema, cfg.table))
        found = cur.fetchone()
        if found is None:
            raise BadInput(f"source.mode cdc: no table {table}")
        oid, identity = found
        key: list[str] = []
        if identity in ("d", "i"):
            cur.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND "
                        "a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND "
                        + ("i.indisprimary" if identity == "d" else "i.indisreplident"), (oid,))
            key = [r[0] for r in cur.fetchall()]
        if identity != "f" and not set(KEY) <= set(key):
            ident = sql.Identifier(cfg.schema, cfg.table).as_string(cur)
            danger = (" Creating the publication now would make the application's UPDATE and DELETE on it fail "
                      "(a published table without a replica identity refuses them), so widen does not."
                      if identity == "n" or not key else "")
            raise BadInput(f"source.mode cdc: the replica identity of {table} "
                           f"({ {'d': 'default', 'n': 'nothing', 'i': 'index', 'f': 'full'}[identity]}"
                           f"{': ' + ', '.join(key) if key else ', no primary key'}) does not carry ship_id, "
                           "data_channel_id and created_time, so an UPDATE or DELETE could not be traced to its "
                           f"wide cell.{danger} Run: ALTER TABLE {ident} REPLICA IDENTITY FULL (updates and "
                           "deletes then log the old row: more WAL for them, none for inserts)")
        cur.execute("SELECT slot_type, plugin, database, "
                    + ("wal_status" if conn.server_version >= 130000 else "NULL") + ", confirmed_flush_lsn::text "
                    "FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        existing = cur.fetchone()
        if existing is not None:
            kind, plugin, database, status, _ = existing
            if kind != "logical" or plugin != "pgoutput" or database != conn.get_dsn_parameters().get("dbname"):
                raise BadInput(f"source.slot {slot!r} exists and is not a pgoutput slot of this database "
                               f"({kind}, {plugin}, {database}): choose another source.slot")
            if status == "lost":
                raise BadInput(f"replication slot {slot!r} {INVALIDATED} (WAL it needed was removed, "
                               "max_slot_wal_keep_size): run stream --drop-slot, start the stream again with a "
                               "new stream.checkpoint (a new slot), and reconcile --repair the time since its "
                               "last batch")
        cur.execute("SELECT p.pubinsert AND p.pubupdate AND p.pubdelete, p.puballtables OR EXISTS (SELECT 1 "
                    "FROM pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid = %s) FROM pg_publication p "
                    "WHERE p.pubname = %s", (oid, publication))
        pub = cur.fetchone()
        if pub is not None and not all(pub):
            raise BadInput(f"publication {publication!r} exists but does not publish inserts, updates and deletes "
                           f"of {table}: widen does not change a publication it did not make; choose another "
                           "source.publication")
    conn.rollback()
    return {"slot": existing, "publication": pub is not None}


def ensure_slot(conn: connection, cfg: SourceConfig, slot: str, publication: str) -> dict:
    """The publication and the slot, made if missing (after ``preflight``); the offset a new
    query starts from: the slot's consistent point (or where an existing slot stands)."""
    from psycopg2 import sql

    found = preflight(conn, cfg, slot, publication)
    with conn.cursor() as cur:
        if not found["publication"]:
            cur.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(publication), sql.Identifier(cfg.schema, cfg.table)))
            conn.commit()
        if found["slot"] is None:
            cur.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            lsn = cur.fetchone()[0]
        else:
            lsn = found["slot"][4]
        cur.execute("SELECT now()")
        now = cur.fetchone()[0]
    conn.commit()
    return {"lsn": lsn, "t": now.isoformat()}


def drop_slot(conn: connection, cfg: SourceConfig, slot: str, publication: str) -> list[str]:
    """``stream --drop-slot``: widen's slot and publication removed; what was dropped."""
    from psycopg2 import sql

    done = []
    with conn.cursor() as cur:
        cur.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
        if row is not None:
            if row[0] is not None:
                raise BadInput(f"replication slot {slot!r} is in use by process {row[0]}: stop the stream first")
            cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            done.append(f"replication slot {slot}")
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
        if cur.fetchone() is not None:
            cur.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))
            done.append(f"publication {publication}")
    conn.commit()
    return done


def retained_wal_bytes(conn: connection, slot: str) -> int | None:
    """WAL the slot keeps on the source's disk (bytes), None without the slot."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots "
                    "WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
    conn.rollback()
    return row[0] if row else None


# -- the Spark source -------------------------------------------------------------------------------

def stream_options(cfg: SourceConfig, query_name: str, **extra) -> dict[str, str]:
    import dataclasses

    slot, publication = slot_names(cfg, query_name)
    options = {"connection": json.dumps(dataclasses.asdict(cfg.connection)), "schema": cfg.schema,
               "table": cfg.table, "order_column": cfg.order_column or "", "slot": slot,
               "publication": publication}
    options.update({k: str(v) for k, v in extra.items()})
    return options


@dataclass
class LsnPartition(InputPartition):
    start: dict
    end: dict


class CdcStreamSource(DataSource):
    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> str:
        return SCHEMA

    def streamReader(self, schema: StructType) -> CdcStreamReader:  # noqa: ARG002 - the schema is fixed
        return CdcStreamReader(self.options)


def _lsn(offset: dict) -> int:
    from widen.pg import pgoutput

    return pgoutput.parse_lsn(offset["lsn"])


class CdcStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    def __init__(self, options: dict[str, str]):
        self.options = options
        self.slot, self.publication = options["slot"], options["publication"]
        self.order_column = options.get("order_column") or None
        self.max_rows = int(options.get("max_rows_per_batch", "0")) or None
        self.target: int | None = None

    def _connect(self, autocommit: bool = True):
        from widen.pg import db

        params = Connection(**json.loads(self.options["connection"])).psycopg_params()
        return db.open_session({**params, "application_name": "widen-cdc"}, autocommit=autocommit)

    def _peek(self, conn: connection, upto_lsn: int | None, upto_changes: int | None) -> list:
        from widen.pg import pgoutput

        with conn.cursor() as cur:
            cur.execute("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, 'proto_version', "
                        "'1', 'publication_names', %s)",
                        (self.slot, pgoutput.lsn_text(upto_lsn) if upto_lsn is not None else None, upto_changes,
                         self._quoted_publication()))
            return [bytes(r[0]) for r in cur.fetchall()]

    def _quoted_publication(self) -> str:
        # publication_names is a list of identifiers: quote the name as one
        return '"' + self.publication.replace('"', '""') + '"'

    # -- offsets ------------------------------------------------------------------------------------
    def initialOffset(self) -> dict:
        if self.options.get("start_offset"):
            return json.loads(self.options["start_offset"])
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                            (self.slot,))
                row = cur.fetchone()
        finally:
            conn.close()
        if row is None:
            raise RuntimeError(f"replication slot {self.slot!r} is gone: run the stream job again (it makes one)")
        return {"lsn": row[0]}

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_rows) if self.max_rows else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_current_wal_flush_lsn()::text")
                from widen.pg import pgoutput

                self.target = pgoutput.parse_lsn(cur.fetchone()[0])
        finally:
            conn.close()

    def latestOffset(self, start: dict, limit: ReadLimit | None = None) -> dict:
        """The end of the last whole transaction after ``start`` within the limit (``start``
        when there is none yet)."""
        from widen.pg import pgoutput

        max_rows = limit.max_rows if isinstance(limit, ReadMaxRows) else None
        begin = _lsn(start)
        conn = self._connect()
        try:
            budget = max_rows
            while True:
                messages = self._peek(conn, self.target, budget + 2 if budget else None)
                end, taken = begin, 0
                for txn in pgoutput.Decoder().feed(messages):
                    if txn.end_lsn <= begin:
                        continue
                    if max_rows and taken and taken + len(txn.changes) > max_rows:
                        break
                    end, taken = txn.end_lsn, taken + len(txn.changes)
                # the limit counts from the slot's position, which may lag behind ``start``: ask
                # again for more when everything peeked was already read
                if budget is None or end != begin or len(messages) < budget:
                    break
                budget *= 4
        finally:
            conn.close()
        return start if end == begin else {"lsn": pgoutput.lsn_text(end)}

    def partitions(self, start: dict, end: dict) -> list[LsnPartition]:
        return [LsnPartition(start, end)] if _lsn(end) > _lsn(start) else []

    def commit(self, end: dict) -> None:
        """Spark has committed every batch up to ``end``: the slot may let go of the WAL before it."""
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                if conn.server_version >= 110000:
                    cur.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn) FROM pg_replication_slots "
                                "WHERE slot_name = %s AND confirmed_flush_lsn < %s::pg_lsn",
                                (self.slot, end["lsn"], self.slot, end["lsn"]))
                else:
                    cur.execute("SELECT count(*) FROM pg_logical_slot_get_binary_changes(%s, %s::pg_lsn, NULL, "
                                "'proto_version', '1', 'publication_names', %s)",
                                (self.slot, end["lsn"], self._quoted_publication()))
        finally:
            conn.close()

    # -- data ---------------------------------------------------------------------------------------
    def read(self, partition: LsnPartition) -> Iterator:
        from widen.pg import pgoutput

        begin, end = _lsn(partition.start), _lsn(partition.end)
        columns = (*COLUMNS, self.order_column) if self.order_column else COLUMNS
        conn = self._connect(autocommit=False)
        try:
            rows: list[tuple] = []          # (text values of ``columns``..., change)
            recompute: set[tuple] = set()   # (ship_id, created_time text)
            decoder = pgoutput.Decoder()
            for txn in decoder.feed(self._peek(conn, end, None)):
                if not begin < txn.end_lsn <= end:
                    continue
                for change in txn.changes:
                    rel = change.relation
                    if (rel.schema, rel.name) != (self.options["schema"], self.options["table"]):
                        continue
                    if change.op == "truncate":
                        raise RuntimeError(
                            f"the narrow table was truncated (transaction {txn.xid}, LSN "
                            f"{pgoutput.lsn_text(txn.commit_lsn)}): widen does not empty wide tables for it. "
                            "Roll the wide tables back (rollback) or repair them (reconcile --repair), then "
                            "restart the stream with a new checkpoint")
                    if change.op == "insert":
                        rows.append((*(_text(change.new, c) for c in columns), INSERT))
                        continue
                    for image in (change.old, change.new):
                        if image and image.get("ship_id") not in (None, pgoutput.UNCHANGED) and \
                                image.get("created_time") not in (None, pgoutput.UNCHANGED):
                            recompute.add((image["ship_id"], image["created_time"]))
                    if change.op == "update":
                        merged = {**(change.old or {}), **{k: v for k, v in change.new.items()
                                                           if v is not pgoutput.UNCHANGED}}
                        rows.append((*(_text(merged, c) for c in columns), UPDATE))
            for ship, created in sorted(recompute):
                rows.append((ship, None, created, *([None] * (len(columns) - 3)), RECOMPUTE))
            yield from self._rendered(conn, columns, rows)
        finally:
            conn.close()

    def _rendered(self, conn: connection, columns: tuple, rows: list[tuple]) -> Iterator:
        """The changed rows rendered and checked by the server, as the other sources do it (a
        ``recompute`` row keeps only its ship and created_time)."""
        import pyarrow as pa
        from psycopg2 import sql

        from widen.core.kernels import ROW_SCHEMA
        from widen.pg import render
        from widen.pg.server import Server

        names = [*ROW_SCHEMA.names, "change"]
        types = [*ROW_SCHEMA.types, pa.string()]
        out: list[tuple] = []
        if rows:
            with conn.cursor() as cur:
                cur.execute("SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE "
                            "a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                            (sql.Identifier(self.options["schema"], self.options["table"]).as_string(cur),))
                kinds = dict(cur.fetchall())
                arrays = [list(col) for col in zip(*rows)]
                cast = sql.SQL(", ").join(
                    sql.SQL("{}::{} AS {}").format(sql.Identifier(f"c{i}"), sql.SQL(kinds[c]), sql.Identifier(c))
                    for i, c in enumerate(columns))
                unnest = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in arrays)
                aliases = sql.SQL(", ").join(sql.Identifier(f"c{i}") for i in range(len(arrays)))
                raw = sql.SQL("CASE WHEN change IS DISTINCT FROM 'recompute' AND {r} IS NOT NULL THEN {a} END").format(
                    r=render.reject_reason(), a=render.raw_reject())
                order = sql.Identifier(self.order_column) if self.order_column else sql.SQL("NULL::bigint")
                value = render.rendered_value(None, Server.of(conn), kinds.get("double_v", "double precision")
                                              .replace("double precision", "float8").replace("real", "float4"))
                cur.execute(sql.SQL("SELECT ship_id, data_channel_id, created_time, {v}, {raw}, {o}, change FROM "
                                    "(SELECT {cast}, {ch} AS change FROM unnest({u}) AS r({a})) t").format(
                    v=value, raw=raw, o=order, cast=cast, ch=sql.Identifier(f"c{len(columns)}"), u=unnest,
                    a=aliases), arrays)
                out = cur.fetchall()
        conn.rollback()
        if out:
            yield pa.RecordBatch.from_arrays([pa.array(col, type=kind) for col, kind in zip(zip(*out), types)],
                                             names=names)


def _text(image: dict | None, column: str):
    from widen.pg import pgoutput

    value = (image or {}).get(column)
    return None if value is pgoutput.UNCHANGED else value
