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
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows, SupportsTriggerAvailableNow

from widen.config import BadInput, Config, Connection, SourceConfig
from widen.core import values

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from psycopg2.extensions import connection
    from pyspark.sql.types import StructType

NAME = "widen_cdc"
#: the comment on a publication widen made (``--drop-slot`` drops no other)
MADE_BY = "widen: change capture of the narrow table (stream --drop-slot removes it)"
SCHEMA = values.ROW_SPARK_SCHEMA + ", change string"
#: pgoutput is 10+; a slot is moved on with pg_replication_slot_advance from 11 (10 consumes)
MIN_VERSION = 100000
INSERT, UPDATE, RECOMPUTE = None, "update", "recompute"
INVALIDATED = "was invalidated"
#: pgoutput message kinds (their first byte): row changes, and the commit
CHANGE_KINDS, COMMIT = frozenset(b"IUDT"), ord("C")
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
                           "WAL until it is read: bound it with max_slot_wal_keep_size, README \"Change data "
                           "capture\")")
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

    def _peek(self, conn: connection, upto_lsn: int | None, upto_changes: int | None, what: str = "data") -> list:
        """The slot's messages up to ``upto_lsn`` (transactions committed before it), ``what`` of
        each (``data``: the message as bytes)."""
        from widen.pg import pgoutput

        with conn.cursor() as cur:
            # messages (14+): the heartbeat's transaction shows from 15 on, where empty ones do not
            messages = ", 'messages', 'true'" if conn.server_version >= 140000 else ""
            cur.execute(f"SELECT {what} FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, 'proto_version', "
                        f"'1', 'publication_names', %s{messages})",
                        (self.slot, pgoutput.lsn_text(upto_lsn) if upto_lsn is not None else None, upto_changes,
                         self._quoted_publication()))
            rows = cur.fetchall()
        return [bytes(r[0]) for r in rows] if what == "data" else rows

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
        when there is none yet).

        Spark asks once the batch ending at ``start`` has committed, so the slot is moved to
        ``start`` first: it keeps no WAL the query has read, and the peek starts there. A slot
        found *past* ``start`` was moved by someone else: changes may be lost, so the stream stops.
        While the table has no change, the slot is moved on through an empty batch once
        ``HEARTBEAT_BYTES`` of WAL are behind it (at the end of a transaction the peek saw: before
        PostgreSQL 15 every transaction shows, from 15 on widen writes a logical decoding message)."""
        from widen.pg import pgoutput

        max_rows = limit.max_rows if isinstance(limit, ReadMaxRows) else None
        begin = _lsn(start)
        conn = self._connect()
        try:
            self._advance(conn, start["lsn"])
            with conn.cursor() as cur:
                cur.execute("SELECT confirmed_flush_lsn::text, pg_current_wal_flush_lsn()::text FROM "
                            "pg_replication_slots WHERE slot_name = %s", (self.slot,))
                row = cur.fetchone()
            if row is None:
                raise RuntimeError(f"replication slot {self.slot!r} is gone (dropped?): {RESTART}")
            if pgoutput.parse_lsn(row[0]) > begin:
                raise RuntimeError(f"replication slot {self.slot!r} was moved to {row[0]}, past this query's position "
                                   f"{start['lsn']}, by something other than this stream (another widen setup with "
                                   f"the same source.slot, or pg_logical_slot_get_changes): changes in between may be "
                                   f"lost to it. {RESTART}, and reconcile --repair")
            flush = pgoutput.parse_lsn(row[1])
            upto = min(flush, self.target) if self.target is not None else flush
            budget = 4 * max_rows + 64 if max_rows else None
            while True:
                # only each message's kind and position cross the wire: the values are read() later
                kinds = self._peek(conn, upto, budget, "lsn::text, get_byte(data, 0)")
                end = idle = begin
                taken, changes, full = 0, 0, False
                for lsn, kind in kinds:
                    if kind in CHANGE_KINDS:
                        changes += 1
                    elif kind == COMMIT:             # a commit's row carries its end LSN
                        at = pgoutput.parse_lsn(lsn)
                        if at > begin:
                            if max_rows and taken and taken + changes > max_rows:
                                full = True
                                break
                            if changes:
                                end, taken = at, taken + changes
                            idle = at
                        changes = 0
                # cut short by the budget before the batch was full: ask for more
                if budget is None or full or len(kinds) < budget:
                    break
                budget *= 4
            if end == begin and idle - begin < HEARTBEAT_BYTES and upto - begin >= HEARTBEAT_BYTES \
                    and conn.server_version >= 140000:
                with conn.cursor() as cur:     # a position past the idle WAL, for the next trigger
                    cur.execute("SELECT pg_logical_emit_message(true, 'widen', 'heartbeat')")
        finally:
            conn.close()
        if end == begin and idle - begin >= HEARTBEAT_BYTES:
            end = idle
        return start if end == begin else {"lsn": pgoutput.lsn_text(end)}

    def partitions(self, start: dict, end: dict) -> list[LsnPartition]:
        return [LsnPartition(start, end)] if _lsn(end) > _lsn(start) else []

    def commit(self, end: dict) -> None:
        """Spark has committed every batch up to ``end``: the slot may let go of the WAL before it."""
        conn = self._connect()
        try:
            self._advance(conn, end["lsn"])
        finally:
            conn.close()

    def _advance(self, conn: connection, lsn: str) -> None:
        """The slot's confirmed position moved forward to ``lsn`` (the end of a transaction a
        committed batch holds), never back."""
        with conn.cursor() as cur:
            if conn.server_version >= 110000:
                cur.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn) FROM pg_replication_slots "
                            "WHERE slot_name = %s AND confirmed_flush_lsn < %s::pg_lsn", (self.slot, lsn, self.slot, lsn))
            else:
                cur.execute("SELECT count(*) FROM pg_logical_slot_get_binary_changes(%s, %s::pg_lsn, NULL, "
                            "'proto_version', '1', 'publication_names', %s) WHERE (SELECT confirmed_flush_lsn FROM "
                            "pg_replication_slots WHERE slot_name = %s) < %s::pg_lsn",
                            (self.slot, lsn, self._quoted_publication(), self.slot, lsn))

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
