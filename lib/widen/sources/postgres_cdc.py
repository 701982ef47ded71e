"""Change data capture: a Structured Streaming source over a logical replication slot (pgoutput).

    source.mode: cdc          (docs/cdc.md)

The stream job creates a publication of the narrow table and a logical replication slot (after the
checks in ``preflight``: nothing is created where the application's writes could fail), records
the slot's consistent point as the query's first offset (the hand-off: every row committed before
it is the backfill's), and reads the slot over a replication connection (``pg.replication``: each
change decoded once, on the driver, and handed to the batch's task in its partition).

An offset is the end LSN of the last transaction a micro-batch holds; a batch is every transaction
whose commit ends in (start, end], in commit order (a long transaction committing after later ones
comes in the batch of its commit). The slot's confirmed position moves to a batch's end only after
Spark has committed the batch (``commit``: a standby status update), i.e. after the sink's transaction with its ledger row: a
crash anywhere replays from the slot and the checkpoint, and a transaction already in a committed
batch is filtered out by its LSN, so no change is skipped or applied twice.

What a batch holds (``SCHEMA``: the rows of ``values.ROW_COLUMNS`` plus ``change``):

- an INSERT: the new row, rendered and validated in SQL exactly as the other sources do it (the
  text values go back to the server through ``unnest``), ``change`` NULL;
- an UPDATE or DELETE: a ``recompute`` row naming the ship and created_time of the old and the new
  row: the sink re-derives those timestamps from the narrow table's current rows (docs/design.md's duplicate
  rule included), so a TOASTed value is never written from a placeholder; an UPDATE's new row is also
  rendered (``change`` = ``update``) so a row made invalid lands in the rejects;
- a TRUNCATE of the narrow table stops the stream with a message (widen never empties wide tables
  because of it);
- the first batch of a new query (its start offset carries the hand-off time ``t``) also re-derives
  every timestamp present in the table dated from ``t`` on (a ship whose clock runs ahead, a row
  dated 2099): the backfill's ``--end t`` leaves those rows out and no change of the slot brings
  them. Later offsets carry no ``t``.

Admission control: ``max_rows_per_batch`` bounds the changes a batch takes (whole transactions).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows, SupportsTriggerAvailableNow

from widen.config import BadInput, Config, Connection, SourceConfig
from widen.core import values
from widen.sources.base import without_handoff_time

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from psycopg2.extensions import connection
    from pyspark.sql.types import StructType

NAME = "widen_cdc"
#: the comment on a publication widen made (``--drop-slot`` drops no other)
MADE_BY = "widen: change capture of the narrow table (stream --drop-slot removes it)"
SCHEMA = values.ROW_SPARK_SCHEMA + ", change string"
#: pgoutput is 10+
MIN_VERSION = 100000
INSERT, UPDATE, RECOMPUTE = None, "update", "recompute"
INVALIDATED = "was invalidated"
#: how a query starts again on a new slot (a new query name: new slot, new ledger, new checkpoint)
RESTART = ("run stream --drop-slot, then start the stream under a new stream.query_name (a new slot, ledger and "
           "checkpoint: the old checkpoint's batch ids are in the ledger)")
#: a slot with no change for the table is moved on (an empty batch) once this much WAL is behind it
HEARTBEAT_BYTES = 16 << 20
#: the columns of the narrow table a change carries (the order column, if any, is added)
COLUMNS = ("ship_id", "data_channel_id", "created_time", "value_format", "double_v", "long_v", "str_v", "bool_v")
KEY = ("ship_id", "data_channel_id", "created_time")


def default_name(query_name: str, scope: str) -> str:
    """widen's slot and publication name for a stream query writing into ``scope`` (the target
    database and catalog): lower-case letters, digits and underscores (what a slot name allows),
    so a staging setup reading the same source never shares production's slot."""
    readable = re.sub(r"[^a-z0-9_]+", "_", query_name.lower()).strip("_")[:40]
    return f"widen_{readable}_{hashlib.md5(f'{query_name}|{scope}'.encode()).hexdigest()[:8]}"


def slot_names(config: Config) -> tuple[str, str]:
    """(slot, publication) of the config's stream query: ``source.slot`` / ``source.publication``
    or widen's default for the query name and target."""
    scope = f"{config.target.connection.describe()}/{config.target.catalog_schema}"
    default = default_name(config.stream.query_name, scope)
    return config.source.slot or default, config.source.publication or default


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
                           "WAL until it is read: bound it with max_slot_wal_keep_size, docs/cdc.md, \"WAL "
                           "retention\")")
        if not may_replicate:
            raise BadInput("source.mode cdc: the source role may not read replication slots: ALTER ROLE … "
                           "REPLICATION (or use a role that has it)")
        cur.execute("SELECT c.oid, c.relreplident, c.relkind, pg_has_role(c.relowner, 'USAGE'), EXISTS (SELECT 1 "
                    "FROM pg_inherits i WHERE i.inhparent = c.oid) FROM pg_class c JOIN pg_namespace n ON "
                    "n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", (cfg.schema, cfg.table))
        found = cur.fetchone()
        if found is None:
            raise BadInput(f"source.mode cdc: no table {table}")
        oid, identity, relkind, owner, parent = found
        if relkind != "r" or parent:
            what = {"p": "a partitioned table", "v": "a view", "m": "a materialized view",
                    "f": "a foreign table"}.get(relkind, "a table with inheritance children")
            raise BadInput(f"source.mode cdc: {table} is {what}; its changes are not published under its own name, "
                           "so widen reads only plain tables this way for now: use source.mode poll")
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
            cur.execute("SELECT current_database()")
            if kind != "logical" or plugin != "pgoutput" or database != cur.fetchone()[0]:
                raise BadInput(f"source.slot {slot!r} exists and is not a pgoutput slot of this database "
                               f"({kind}, {plugin}, {database}): choose another source.slot")
            if status == "lost":
                raise BadInput(f"replication slot {slot!r} {INVALIDATED} (WAL it needed was removed, "
                               f"max_slot_wal_keep_size): {RESTART}, and reconcile --repair the time since its last "
                               "batch")
        whole = "r.prqual IS NULL AND r.prattrs IS NULL" if conn.server_version >= 150000 else "true"
        cur.execute("SELECT p.pubinsert AND p.pubupdate AND p.pubdelete"
                    + (" AND p.pubtruncate" if conn.server_version >= 110000 else "")
                    + f", p.puballtables OR EXISTS (SELECT 1 FROM pg_publication_rel r WHERE r.prpubid = p.oid AND "
                    f"r.prrelid = %s AND {whole}) FROM pg_publication p WHERE p.pubname = %s", (oid, publication))
        pub = cur.fetchone()
        if pub is not None and not all(pub):
            raise BadInput(f"publication {publication!r} exists but does not publish every insert, update, delete "
                           f"and truncate of the whole of {table}: widen does not change a publication it did not "
                           "make; choose another source.publication")
        if existing is not None and pub is None:
            raise BadInput(f"replication slot {slot!r} exists but its publication {publication!r} does not (a slot "
                           f"cannot read a publication made after it): {RESTART}")
        if pub is None and not owner:
            ident = sql.Identifier(cfg.schema, cfg.table).as_string(cur)
            raise BadInput(f"source.mode cdc: the source role does not own {table}, so it cannot publish it: have "
                           f"its owner run CREATE PUBLICATION {sql.Identifier(publication).as_string(cur)} FOR TABLE "
                           f"{ident} (or set source.publication to an existing one)")
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
            cur.execute(sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
                sql.Identifier(publication), sql.Literal(MADE_BY)))
            conn.commit()
        if found["slot"] is None:
            log.info("creating replication slot %s (it waits for the write transactions running now to end)", slot)
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
        cur.execute("SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s",
                    (publication,))
        row = cur.fetchone()
        if row is not None and row[0] == MADE_BY:       # never a publication someone else made
            cur.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))
            done.append(f"publication {publication}")
        elif row is not None:
            log.info("publication %s was not made by widen: left as it is", publication)
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

@dataclass
class LsnPartition(InputPartition):
    start: dict
    end: dict
    #: the batch's changed rows as text (``COLUMNS``, the order column, ``change``), decoded once on the driver
    rows: list


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
    """Offsets, partitions and commits run in one long-lived process on the driver (Spark's
    streaming source runner): it holds the replication connection (``replication.SlotStream``),
    so each change is decoded once, and hands a batch's rows to ``read`` in its partition."""

    def __init__(self, options: dict[str, str]):
        self.options = options
        self.slot, self.publication = options["slot"], options["publication"]
        self.order_column = options.get("order_column") or None
        self.max_rows = int(options.get("max_rows_per_batch", "0")) or None
        self.target: int | None = None
        self._stream = None          # made on the driver when first needed (never pickled to a task)
        self._session: connection | None = None

    def _connect(self, autocommit: bool = True):
        from widen.pg import db

        params = Connection(**json.loads(self.options["connection"])).psycopg_params()
        return db.open_session({**params, "application_name": "widen-cdc"}, autocommit=autocommit)

    def _sql(self) -> connection:
        """The driver's SQL session on the source (the slot's state, the server's WAL position)."""
        if self._session is None or self._session.closed:
            self._session = self._connect()
        return self._session

    def _slot_stream(self, start: dict):
        """The replication stream, opened at ``start`` once the slot is known to be there."""
        from widen.pg import pgoutput, replication

        begin = _lsn(start)
        if self._stream is None:
            with self._sql().cursor() as cur:
                cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                            (self.slot,))
                row = cur.fetchone()
            if row is None:
                raise RuntimeError(f"replication slot {self.slot!r} is gone (dropped?): {RESTART}")
            if pgoutput.parse_lsn(row[0]) > begin:
                # the replication connection itself confirms WAL that held nothing for the table
                # (psycopg2 answers the server's keepalives so), so this is normal; only someone else
                # reading this slot (the same source.slot in another setup, pg_logical_slot_get_changes)
                # would have taken changes
                log.info("replication slot %s is at %s, past the query's position %s: the WAL in between held no "
                         "change of the table unless something other than this stream read the slot (then "
                         "reconcile --repair)", self.slot, row[0], start["lsn"])
            params = Connection(**json.loads(self.options["connection"])).psycopg_params()
            buffer = max(2 * self.max_rows, 50_000) if self.max_rows else 200_000
            self._stream = replication.SlotStream({**params, "application_name": "widen-cdc"}, self.slot,
                                                  self.publication, begin, buffer)
        return self._stream

    # -- offsets ------------------------------------------------------------------------------------
    def initialOffset(self) -> dict:
        if self.options.get("start_offset"):
            return json.loads(self.options["start_offset"])
        with self._sql().cursor() as cur:
            cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                        (self.slot,))
            row = cur.fetchone()
        if row is None:
            raise RuntimeError(f"replication slot {self.slot!r} is gone: run the stream job again (it makes one)")
        return {"lsn": row[0]}

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_rows) if self.max_rows else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        from widen.pg import pgoutput

        with self._sql().cursor() as cur:
            cur.execute("SELECT pg_current_wal_flush_lsn()::text")
            self.target = pgoutput.parse_lsn(cur.fetchone()[0])

    def latestOffset(self, start: dict, limit: ReadLimit | None = None) -> dict:
        """The end of the last whole transaction after ``start`` within the limit (``start``
        when there is none yet).

        Spark asks once the batch ending at ``start`` has committed, so the slot is moved to
        ``start`` first (it keeps no WAL the query has read). While the table has no change, the
        slot is moved on through an empty batch once ``HEARTBEAT_BYTES`` of WAL are behind it (at
        the end of a transaction the stream saw: before PostgreSQL 15 every transaction shows, from
        15 on widen writes a logical decoding message)."""
        from widen.pg import pgoutput

        if "t" in start:
            # the first batch: it also takes the rows dated after the hand-off (``partitions``), so
            # it ends at an offset without ``t`` even when the slot has no change yet
            return without_handoff_time(self.latestOffset(without_handoff_time(start), limit))
        max_rows = limit.max_rows if isinstance(limit, ReadMaxRows) else None
        begin = _lsn(start)
        stream = self._slot_stream(start)
        stream.confirm(begin)
        if self.target is not None:
            stream.catch_up(self.target)          # --once: everything committed before it started
        else:
            stream.poll()
        upto = self.target if self.target is not None else None
        end = idle = begin
        taken = 0
        for txn in stream.transactions:
            if txn.end_lsn <= begin:
                continue
            if upto is not None and txn.end_lsn > upto:
                break
            if txn.changes:
                if max_rows and taken and taken + len(txn.changes) > max_rows:
                    break
                end, taken = txn.end_lsn, taken + len(txn.changes)
            idle = txn.end_lsn
        if end == begin:
            if idle - begin >= HEARTBEAT_BYTES:
                return {"lsn": pgoutput.lsn_text(idle)}
            if self._sql().server_version >= 140000:
                with self._sql().cursor() as cur:   # a position past the idle WAL, for the next trigger
                    cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), %s::pg_lsn) >= %s",
                                (start["lsn"], HEARTBEAT_BYTES))
                    if cur.fetchone()[0]:
                        cur.execute("SELECT pg_logical_emit_message(true, 'widen', 'heartbeat')")
            return start
        return {"lsn": pgoutput.lsn_text(end)}

    def partitions(self, start: dict, end: dict) -> list[LsnPartition]:
        """The batch (start, end]: its transactions' changes of the narrow table as text rows (a
        batch planned before a restart waits until the stream has received it again)."""
        from widen.pg import pgoutput

        begin, last = _lsn(start), _lsn(end)
        # (ship_id, created_time text): the timestamps the sink re-derives from the table's rows
        recompute: set[tuple] = set(self._future_times(start["t"])) if "t" in start else set()
        if last <= begin and not recompute:
            return []
        stream = self._slot_stream(start)
        stream.catch_up(last)
        columns = (*COLUMNS, self.order_column) if self.order_column else COLUMNS
        rows: list[tuple] = []          # (text values of ``columns``..., change)
        for txn in stream.transactions:
            if not begin < txn.end_lsn <= last:
                continue
            for change in txn.changes:
                rel = change.relation
                if (rel.schema, rel.name) != (self.options["schema"], self.options["table"]):
                    continue
                if change.op == "truncate":
                    raise RuntimeError(
                        f"the narrow table was truncated (transaction {txn.xid}, LSN "
                        f"{pgoutput.lsn_text(txn.commit_lsn)}): widen does not empty wide tables for it. "
                        f"Roll the wide tables back (rollback) or repair them (reconcile --repair); {RESTART}")
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
        return [LsnPartition(start, end, rows)] if rows else []

    def _future_times(self, since: str) -> list[tuple]:
        """The ships and timestamps in the table dated from the hand-off time on (one scan, at
        the first batch only)."""
        from psycopg2 import sql

        with self._sql().cursor() as cur:
            cur.execute(sql.SQL("SELECT DISTINCT ship_id, created_time::text FROM {} WHERE created_time >= %s "
                                "AND ship_id IS NOT NULL AND ship_id <> ''").format(
                sql.Identifier(self.options["schema"], self.options["table"])), (since,))
            return cur.fetchall()

    def commit(self, end: dict) -> None:
        """Spark has committed every batch up to ``end``: the slot may let go of the WAL before it."""
        if self._stream is not None:
            self._stream.confirm(_lsn(end))

    def stop(self) -> None:
        for closing in (self._stream, self._session):
            if closing is not None:
                closing.close()
        self._stream = self._session = None

    # -- data ---------------------------------------------------------------------------------------
    def read(self, partition: LsnPartition) -> Iterator:
        columns = (*COLUMNS, self.order_column) if self.order_column else COLUMNS
        conn = self._connect(autocommit=False)
        try:
            yield from self._rendered(conn, columns, partition.rows)
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
                cur.execute(sql.SQL("SELECT ship_id, data_channel_id, created_time, {v}, {raw}, {o}, value_format, change FROM "
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
