"""The catalog's tables, versioned (docs/design.md, "Catalog and ledger").

Tools outside the project read these tables, so a release only adds (or deprecates) columns and
tables, never changes one silently. Every change is a numbered migration; ``migrate`` applies the
ones a catalog lacks, once, in order, in one transaction, under an advisory lock (so two jobs that
start at once never race), and records them in ``schema_migrations``. A catalog newer than this
code is refused with a message that says so. Migration 1 is the catalog as release 0.1 made it
(before versioning, every statement idempotent): such a catalog upgrades in place.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from psycopg2 import sql

from widen.config import BadInput
from widen.pg.server import Server

if TYPE_CHECKING:
    from psycopg2.extensions import connection

log = logging.getLogger(__name__)

#: (version, what it adds, statements with {s} for the catalog schema)
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "release 0.1: layouts, ledgers, rejects, reconcile results", [
        """CREATE TABLE IF NOT EXISTS {s}.wide_tables (
            ship_id text NOT NULL, part integer NOT NULL, table_schema text NOT NULL,
            table_name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (ship_id, part), UNIQUE (table_schema, table_name))""",
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
        "ALTER TABLE {s}.stream_batches ADD COLUMN IF NOT EXISTS late_rows bigint",
        "ALTER TABLE {s}.stream_batches ADD COLUMN IF NOT EXISTS newest_created_time timestamptz",
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
    ]),
    (2, "table names unique across the fleet (wide_tables.name_note); the stream's failures by ship", [
        # why a table does not have its natural name (a collision resolved by naming.TableNamer)
        "ALTER TABLE {s}.wide_tables ADD COLUMN IF NOT EXISTS name_note text",
        """CREATE TABLE IF NOT EXISTS {s}.stream_failures (
            query_name text NOT NULL, batch_id bigint NOT NULL, ship_id text NOT NULL, narrow_rows bigint,
            first_created_time timestamptz, last_created_time timestamptz, error text,
            failed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (query_name, batch_id, ship_id))""",
    ]),
    (3, "rolled-back ships (ship_states); the stream's recorded first offset (stream_starts)", [
        """CREATE TABLE IF NOT EXISTS {s}.ship_states (
            ship_id text PRIMARY KEY, state text NOT NULL, since timestamptz NOT NULL DEFAULT now(), detail text)""",
        """CREATE TABLE IF NOT EXISTS {s}.stream_starts (
            query_name text NOT NULL, checkpoint text NOT NULL, start_offset text NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (query_name, checkpoint))""",
    ]),
    (4, "each ship's lifecycle (ship_lifecycle) and how it got there (ship_transitions); reader views "
        "(reader_views, reader_view_columns)", [
        # the facts of widen.core.lifecycle.FACTS; state is derived from them (lifecycle.state_of)
        """CREATE TABLE IF NOT EXISTS {s}.ship_lifecycle (
            ship_id text PRIMARY KEY, state text NOT NULL, since timestamptz NOT NULL DEFAULT now(),
            backfill_started_at timestamptz, backfill_chunks_total integer, backfilled_at timestamptz,
            backfilled_through timestamptz, live_since timestamptz, last_streamed_at timestamptz,
            verified_at timestamptz, verified_from timestamptz, verified_through timestamptz,
            last_reconcile_at timestamptz, last_reconcile_from timestamptz, last_reconcile_through timestamptz,
            last_reconcile_result text, switched_at timestamptz, rolled_back_at timestamptz)""",
        """CREATE TABLE IF NOT EXISTS {s}.ship_transitions (
            ship_id text NOT NULL, from_state text, to_state text NOT NULL, job text NOT NULL,
            figures jsonb, at timestamptz NOT NULL DEFAULT clock_timestamp())""",
        "CREATE INDEX IF NOT EXISTS ship_transitions_ship ON {s}.ship_transitions (ship_id, at)",
        # one view per ship: what it reads now (narrow | wide) and its columns in their fixed order
        """CREATE TABLE IF NOT EXISTS {s}.reader_views (
            ship_id text PRIMARY KEY, view_schema text NOT NULL, view_name text NOT NULL, name_note text,
            reads text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
            changed_at timestamptz NOT NULL DEFAULT now(), UNIQUE (view_schema, view_name))""",
        """CREATE TABLE IF NOT EXISTS {s}.reader_view_columns (
            ship_id text NOT NULL, position integer NOT NULL, column_name text NOT NULL,
            data_channel_id text NOT NULL, added_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (ship_id, position), UNIQUE (ship_id, column_name))""",
        # ships rolled back before this version
        """INSERT INTO {s}.ship_lifecycle (ship_id, state, since, rolled_back_at)
            SELECT ship_id, 'rolled_back', since, since FROM {s}.ship_states WHERE state = 'rolled_back'
            ON CONFLICT (ship_id) DO NOTHING""",
    ]),
    (5, "the report page reads the latest reconcile of recent buckets by bucket_start", [
        "CREATE INDEX IF NOT EXISTS reconcile_results_bucket ON {s}.reconcile_results (bucket_start, ship_id)",
    ]),
    (6, "typed wide columns: each channel's column type (NULL before: text)", [
        "ALTER TABLE {s}.channel_columns ADD COLUMN IF NOT EXISTS column_type text",
    ]),
    (7, "backfill chunks are grid cells: the range of a cell read so far (status partial while it is "
        "not the whole cell); a chunk replaces the rejects of its range by ship and time", [
        "ALTER TABLE {s}.backfill_chunks ADD COLUMN IF NOT EXISTS covered_start timestamptz, "
        "ADD COLUMN IF NOT EXISTS covered_end timestamptz",
        "CREATE INDEX IF NOT EXISTS rejects_ship_time ON {s}.rejects (ship_id, created_time)",
    ]),
]
LATEST = MIGRATIONS[-1][0]


class CatalogTooNew(BadInput):
    """The catalog was migrated by a newer widen than this one."""


def migrate(conn: connection, catalog_schema: str) -> int:
    """Bring the catalog schema to ``LATEST`` (creating it when missing); commits. Returns the
    version it found."""
    s = sql.Identifier(catalog_schema)
    Server.of(conn).require_target(f"the target server {conn.info.user}@{conn.info.host}:{conn.info.port}")
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('widen.catalog'), hashtext(%s))", (catalog_schema,))
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s))
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.schema_migrations (version integer PRIMARY KEY, "
                            "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())").format(s))
        cur.execute(sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_migrations").format(s))
        found = cur.fetchone()[0]
        if found > LATEST:
            conn.rollback()
            raise CatalogTooNew(f"target.catalog_schema {catalog_schema!r} is at catalog version {found}, newer "
                                f"than this widen knows (up to {LATEST}): run a widen at least as new as the one "
                                "that migrated it, or point target.catalog_schema at another schema")
        for version, description, statements in MIGRATIONS:
            if version <= found:
                continue
            for statement in statements:
                cur.execute(sql.SQL(statement).format(s=s))
            cur.execute(sql.SQL("INSERT INTO {}.schema_migrations (version, description) VALUES (%s, %s)").format(s),
                        (version, description))
            log.info("catalog %s: migration %d applied (%s)", catalog_schema, version, description)
    conn.commit()
    return found


#: what a read-only job says on a server where no job has made the catalog yet
NO_CATALOG = "no catalog yet: run plan or backfill first"


def open_existing(conn: connection, catalog_schema: str) -> bool:
    """For read-only jobs (status, report, ``--dry-run``): True when the catalog exists (one an
    older widen made is migrated, as any job would, before it is read), False when there is none,
    creating nothing (no schema on an empty server, no statement a read-only role may not run)."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'schema_migrations'",
                    (catalog_schema,))
        if cur.fetchone() is None:
            conn.rollback()
            return False
        cur.execute(sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_migrations").format(
            sql.Identifier(catalog_schema)))
        found = cur.fetchone()[0]
    conn.rollback()
    if found != LATEST:
        migrate(conn, catalog_schema)      # refuses a newer one (CatalogTooNew)
    return True
