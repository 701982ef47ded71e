"""Races between chunks of one ship (issue 29, item 13): while a chunk runs (its rows pivoted into
staging, or handed back for Delta) another chunk of the ship turns a typed column to text, or makes a
part table; the chunk then merges under the layout it started with. The moment is made exact by
running the other chunk's DDL (``targets.text_columns``, ``targets.prepare_ship``: what a chunk or the
stream runs) right after the second chunk's Spark job. The wide tables must equal the oracle's pivot
(tests/oracle.py) and every chunk succeed at its only attempt.

Seen failing before the fix: the column turned text (PostgreSQL: ``CASE types text and double
precision cannot be matched``, the chunk failed; Delta: the doubles cast back to Spark's text, 3
cells differ). The part made mid-run passed before and after on both targets (PostgreSQL fills a
part made meanwhile at the merge; Delta's part gets every time too): kept as the proof."""
from __future__ import annotations

import datetime as dt

import nasty
import oracle
import pytest
from psycopg2 import sql

from widen import targets
from widen.jobs import backfill
from widen.pg import db
from widen.targets.delta import DeltaChunkWrite
from widen.targets.postgres import PostgresChunkWrite

NAME = "chunkrace"
SRC, TGT, CAT, COPY = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}", f"copy_{NAME}"
SHIP = "ship r"
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
#: doubles whose text a cast would change: 17 digits before PostgreSQL 12, Spark's 1.0E-7
DOUBLES = [0.1, 1e-07, 2.5, -0.0, 1e300, 0.1 + 0.2]


def readings(hour: int, channels: list[str]) -> list[tuple]:
    out = []
    for i, d in enumerate(DOUBLES):
        when = T0 + dt.timedelta(hours=hour, seconds=15 * i)
        for ch in channels:
            out.append((SHIP, ch, when, "Decimal", d, None, None, None) if ch == "a" else
                       (SHIP, ch, when, "Integer", None, i, None, None) if ch == "b" else
                       (SHIP, ch, when, "String", None, None, f"z{i}", None))
    return out


def after_run(monkeypatch, config, action) -> list:
    """Run ``action(conn, target)`` once, right after the Spark job of the second hour's chunk
    (the first one made the tables), before its merge."""
    fired: list = []
    for cls in (PostgresChunkWrite, DeltaChunkWrite):
        def run(self, narrow, original=cls.run):
            stats = original(self, narrow)
            if not fired and self.chunk.range_start == T0 + dt.timedelta(hours=1):
                fired.append(self.chunk.range_start)
                with db.connection(config.target.connection) as conn:
                    action(conn, self.target)
            return stats
        monkeypatch.setattr(cls, "run", run)
    return fired


def check(spark, pg, root: str | None) -> None:
    with pg.cursor() as cur:
        wide = TGT
        if root is not None:
            oracle.copy_delta_tables(spark, cur, root, CAT, COPY)
            wide = COPY
        oracle.assert_equal_to_oracle(cur, SRC, wide, CAT)


def configure(fresh_fleet, make_config, tmp_path, kind: str, **overrides):
    fresh_fleet(NAME, ships=0).close()
    root = str(tmp_path / "lake") if kind == "delta" else None
    delta = {"target__kind": "delta", "target__delta_root": root} if root else {}
    config = make_config(NAME, backfill__parallel_chunks=1, backfill__max_attempts=1, **delta, **overrides)
    return config, root


@pytest.mark.parametrize("kind", ["postgres", "delta"])
def test_a_column_turned_text_while_a_chunk_ran(fresh_fleet, make_config, spark, pg, tmp_path, monkeypatch, kind):
    config, root = configure(fresh_fleet, make_config, tmp_path, kind, target__column_types="typed")
    with pg.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(COPY)))
    nasty.insert(pg, SRC, readings(0, ["a", "b"]) + readings(1, ["a", "b"]))
    fired = after_run(monkeypatch, config, lambda conn, target: targets.text_columns(conn, target, SHIP, ["a"]))
    result = backfill.run(config, spark)
    assert fired == [T0 + dt.timedelta(hours=1)] and result.exit_code == 0, result.summary
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT coalesce(column_type, 'text') FROM {} WHERE data_channel_id = 'a'").format(
            sql.Identifier(CAT, "channel_columns")))
        assert cur.fetchone() == ("text",)
    check(spark, pg, root)


@pytest.mark.parametrize("kind", ["postgres", "delta"])
def test_a_part_made_while_a_chunk_ran(fresh_fleet, make_config, spark, pg, tmp_path, monkeypatch, kind):
    """Channel z (first read by the third chunk) goes to part 2, made while the second chunk ran:
    part 2 must still get a row for every time of the second chunk."""
    config, root = configure(fresh_fleet, make_config, tmp_path, kind, target__max_columns_per_table=2)
    with pg.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(COPY)))
    nasty.insert(pg, SRC, readings(0, ["a", "b"]) + readings(1, ["a", "b"]) + readings(2, ["a", "b", "z"]))
    fired = after_run(monkeypatch, config, lambda conn, target: targets.prepare_ship(conn, target, SHIP, ["z"]))
    result = backfill.run(config, spark)
    assert fired == [T0 + dt.timedelta(hours=1)] and result.exit_code == 0, result.summary
    with pg.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s").format(
            sql.Identifier(CAT, "wide_tables")), (SHIP,))
        assert cur.fetchone() == (2,)
    check(spark, pg, root)
