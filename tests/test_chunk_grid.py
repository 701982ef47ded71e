"""Ledger chunks stay the epoch-aligned grid cells whatever --start/--end a backfill ran with: a
cell cut by the hand-off's --end is recorded as partial and later completed (only its remainder
read, its rows counted once); re-runs name the same chunks; progress never passes 100 %."""
from __future__ import annotations

import datetime as dt

import nasty
import oracle
import pytest
from hypothesis import given, settings, strategies as st
from psycopg2 import sql

from widen.core.chunks import cell_chunk, extend_coverage, fold_reads, left_to_read
from widen.jobs import backfill, resume, rollback, status
from widen.sources import generate

NAME = "chunkgrid"
SRC, TGT, CAT = f"src_{NAME}", f"wide_{NAME}", f"cat_{NAME}"
UTC = dt.UTC
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)
#: the hand-off point: inside the second 1-hour cell of the generated history (from 2026-01-01)
HANDOFF = dt.datetime(2026, 1, 1, 1, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def fleet(fresh_fleet, make_config):
    conn = fresh_fleet(NAME, ships=2, channels=3, hours=3, seed=11)
    yield {"config": make_config(NAME)}                 # backfill.chunk_hours: 1
    conn.close()


def ledger(cur, ship: str) -> list[tuple]:
    cur.execute(sql.SQL("SELECT range_start, range_end, status, narrow_rows FROM {} WHERE ship_id = %s "
                        "ORDER BY range_start, range_end").format(sql.Identifier(CAT, "backfill_chunks")), (ship,))
    return cur.fetchall()


def narrow_count(cur, ship: str, since: dt.datetime | None = None) -> int:
    cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s AND created_time >= %s").format(
        sql.Identifier(SRC, "tbl_data_timeseries")), (ship, since or dt.datetime(1, 1, 1, tzinfo=UTC)))
    return cur.fetchone()[0]


def grid(cur, ship: str) -> list[dt.datetime]:
    """The cells of the ship's history (from the source, by the test's own arithmetic)."""
    cur.execute(sql.SQL("SELECT DISTINCT date_trunc('hour', created_time) FROM {} WHERE ship_id = %s ORDER BY 1")
                .format(sql.Identifier(SRC, "tbl_data_timeseries")), (ship,))
    return [r[0] for r in cur.fetchall()]


def backfill_rejects(cur, ship: str) -> list[tuple]:
    cur.execute(sql.SQL("SELECT created_time, count(*) FROM {} WHERE ship_id = %s AND job = 'backfill' "
                        "GROUP BY 1 ORDER BY 1").format(sql.Identifier(CAT, "rejects")), (ship,))
    return cur.fetchall()


def status_row(config, ship: str) -> tuple[dict, str]:
    result = status.run(config, ships=[ship])
    [row] = result.summary["ship_status"]
    line = next(line for line in result.report.splitlines() if line.startswith(ship))
    return row, line


def test_a_cell_cut_by_end_is_partial_and_a_later_backfill_reads_only_its_rest(fleet, spark, pg):
    ship = generate.ship_ids(2)[1]
    config = fleet["config"]
    with pg.cursor() as cur:
        cells = grid(cur, ship)
        assert len(cells) == 3 and HANDOFF - cells[1] == HOUR / 2
        # a bad row on each side of the hand-off, in the cut cell: each a reject once, always
        bad = [cells[1] + 10 * MINUTE, cells[1] + 50 * MINUTE]
        nasty.insert(pg, SRC, [(ship, "bad", at, "Float", 1.0, None, None, None) for at in bad])
        first = backfill.run(config, spark, ships=[ship], end=HANDOFF)
        assert first.exit_code == 0, first.report
        assert first.summary["narrow_rows"] == narrow_count(cur, ship) - narrow_count(cur, ship, HANDOFF)
        rows = ledger(cur, ship)
        assert [(lo, hi, st) for lo, hi, st, _ in rows] == [
            (cells[0], cells[0] + HOUR, "done"), (cells[1], cells[1] + HOUR, "partial")]
        row, line = status_row(config, ship)
        assert (row["chunks_done"], row["backfill_chunks_total"]) == (2, 2), line
        assert row["state"] == "backfilled"         # through the hand-off

        second = backfill.run(config, spark, ships=[ship])
        assert second.exit_code == 0, second.report
        # only what the first run left: the cut cell's rest and the last cell
        assert second.summary["narrow_rows"] == narrow_count(cur, ship, HANDOFF)
        rows = ledger(cur, ship)
        assert [(lo, hi, st) for lo, hi, st, _ in rows] == [(c, c + HOUR, "done") for c in cells]
        assert sum(n for *_, n in rows) == narrow_count(cur, ship)          # every row counted once
        row, line = status_row(config, ship)
        assert (row["chunks_done"], row["backfill_chunks_total"]) == (3, 3), line
        assert "3/3 100%" in line
        assert oracle.differences(cur, SRC, TGT, CAT, ship) == {f"tbl_data_timeseries_{ship}": (0, 0)}

        again = backfill.run(config, spark, end=HANDOFF, ships=[ship])     # a re-run names the same chunks
        assert (again.summary["chunks_done"], again.summary["narrow_rows"]) == (0, 0)
        assert ledger(cur, ship) == rows
        assert backfill_rejects(cur, ship) == [(at, 1) for at in bad]

        # a range rollback inside the cut cell: the cells it touches are redone whole, rejects once
        gone = (cells[1] + 45 * MINUTE, cells[2] + 30 * MINUTE)
        assert rollback.run(config, ships=[ship], start=gone[0], end=gone[1]).exit_code == 0
        redo = backfill.run(config, spark, ships=[ship])
        assert (redo.exit_code, redo.summary["chunks_done"]) == (0, 2), redo.report
        assert ledger(cur, ship) == rows
        assert backfill_rejects(cur, ship) == [(at, 1) for at in bad]
        assert oracle.differences(cur, SRC, TGT, CAT, ship) == {f"tbl_data_timeseries_{ship}": (0, 0)}


def test_rollback_resume_backfill_then_the_handoff_backfill_reads_nothing_again(fleet, spark, pg):
    """The issue's sequence: rollback -> resume -> backfill --ships S -> the hand-off's backfill --end t."""
    ship, other = generate.ship_ids(2)
    config = fleet["config"]
    with pg.cursor() as cur:
        cells = grid(cur, ship)
        assert backfill.run(config, spark, ships=[ship]).exit_code == 0
        assert rollback.run(config, ships=[ship]).exit_code == 0
        assert resume.run(config, ships=[ship]).exit_code == 0
        assert backfill.run(config, spark, ships=[ship]).exit_code == 0
        before = ledger(cur, ship)
        handoff = backfill.run(config, spark, end=HANDOFF)                 # the whole fleet
        assert handoff.exit_code == 0, handoff.report
        assert (handoff.summary["chunks_done"], handoff.summary["narrow_rows"]) == (0, 0), handoff.summary
        assert ledger(cur, ship) == before
        assert [(lo, hi, st) for lo, hi, st, _ in before] == [(c, c + HOUR, "done") for c in cells]
        assert sum(n for *_, n in before) == narrow_count(cur, ship)
        for s in (ship, other):
            row, line = status_row(config, s)
            assert (row["chunks_done"], row["backfill_chunks_total"]) == (3, 3), line
            assert "3/3 100%" in line
        oracle.assert_equal_to_oracle(cur, SRC, TGT, CAT)


CELL = dt.datetime(2026, 1, 1, 1, tzinfo=UTC)
#: a run: (--start, --end) in minutes from the cell's start (None: not given), or a range rollback
runs = st.one_of(st.tuples(st.none() | st.integers(-30, 90), st.none() | st.integers(-30, 90)),
                 st.just("rollback"))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(runs, max_size=8))
def test_any_sequence_of_runs_names_the_cell_reads_what_is_asked_and_counts_each_row_once(sequence):
    """One reading a minute in the cell; the ledger's coverage and count as the backfill keeps them."""
    covered, counted = None, 0
    for run in sequence:
        if run == "rollback":                   # the cell's ledger row is deleted
            covered, counted = None, 0
            continue
        start, end = (None if m is None else CELL + m * MINUTE for m in run)
        if start is not None and end is not None and start >= end:
            continue                            # bad input, refused before planning
        chunk = cell_chunk("S", CELL, 3600, start, end, 0)
        if chunk.range_start >= chunk.range_end:
            continue                            # the cell holds none of the range: not planned
        assert chunk.key == ("S", CELL, CELL + HOUR)
        rest = left_to_read(chunk, covered)
        if rest is not None:
            assert rest.key == chunk.key and CELL <= rest.range_start < rest.range_end <= CELL + HOUR
            covered, adds = extend_coverage(covered, (rest.range_start, rest.range_end))
            rows = (rest.range_end - rest.range_start) // MINUTE
            counted = counted + rows if adds else rows
        lo, hi = covered
        assert lo <= chunk.range_start and chunk.range_end <= hi        # what the run asked for is read
        assert counted == (hi - lo) // MINUTE                           # each row of the cell counted once
        assert left_to_read(chunk, covered) is None                     # a re-run reads nothing


def test_a_ledger_an_older_widen_wrote_is_folded_into_its_cells(fleet, spark, pg):
    """Rows an older widen recorded (a cell cut by --end under the cut range, a cell in two halves of
    another chunk_hours) become their cells: the next backfill reads only what they leave, names
    the same chunks as every later run, and counts every row once."""
    ship = "ship 'older ledger'"
    config = fleet["config"]
    cells = [CELL - HOUR, CELL, CELL + HOUR]
    nasty.insert(pg, SRC, [(ship, ch, cells[0] + m * MINUTE + dt.timedelta(seconds=7), "Decimal", m * 0.5, None,
                            None, None) for m in range(180) for ch in ("a", "b")])
    with pg.cursor() as cur:
        first = backfill.run(config, spark, ships=[ship], end=HANDOFF)
        assert first.exit_code == 0, first.report
        table = sql.Identifier(CAT, "backfill_chunks")
        # what an older widen left: the cut cell under its cut range, done; the first cell in halves
        cur.execute(sql.SQL("UPDATE {} SET range_end = covered_end, status = 'done', covered_start = NULL, "
                            "covered_end = NULL WHERE ship_id = %s AND status = 'partial'").format(table), (ship,))
        assert cur.rowcount == 1
        half = cells[0] + HOUR / 2
        cur.execute(sql.SQL("DELETE FROM {} WHERE ship_id = %s AND range_start = %s").format(table), (ship, cells[0]))
        for lo, hi in ((cells[0], half), (half, cells[1])):
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE ship_id = %s AND created_time >= %s AND "
                                "created_time < %s").format(sql.Identifier(SRC, "tbl_data_timeseries")), (ship, lo, hi))
            cur.execute(sql.SQL("INSERT INTO {} (ship_id, range_start, range_end, status, narrow_rows, wide_rows, "
                                "attempts) VALUES (%s, %s, %s, 'done', %s, %s, 1)").format(table),
                        (ship, lo, hi, cur.fetchone()[0], 0))
        pg.commit()

        second = backfill.run(config, spark, ships=[ship])
        assert second.exit_code == 0, second.report
        assert second.summary["narrow_rows"] == narrow_count(cur, ship, HANDOFF)    # only the rest
        assert second.summary["rejected_rows"] == 0
        rows = ledger(cur, ship)
        assert [(lo, hi, st) for lo, hi, st, _ in rows] == [(c, c + HOUR, "done") for c in cells]
        assert sum(n for *_, n in rows) == narrow_count(cur, ship)                  # every row counted once
        row, line = status_row(config, ship)
        assert (row["chunks_done"], row["backfill_chunks_total"]) == (3, 3), line
        again = backfill.run(config, spark, ships=[ship], end=HANDOFF)
        assert (again.summary["chunks_done"], again.summary["narrow_rows"]) == (0, 0)
        assert ledger(cur, ship) == rows
        differences = oracle.differences(cur, SRC, TGT, CAT, ship)
        assert differences and set(differences.values()) == {(0, 0)}, differences


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 59), unique=True, max_size=5), st.integers(0, 60), st.integers(0, 60))
def test_reads_that_follow_each_other_fold_into_one_range(cuts, lo, hi):
    """Contiguous reads add up; one read holding the others gives its own; a hole or a part overlap
    is not folded (the cell is read again)."""
    bounds = sorted({0, *cuts, 60})
    pieces = [((CELL + a * MINUTE, CELL + b * MINUTE), (b - a, 1)) for a, b in zip(bounds, bounds[1:])]
    assert fold_reads(pieces) == ((CELL, CELL + HOUR), (60, len(pieces)))
    whole = ((CELL, CELL + HOUR), (60, 9))
    if len(pieces) > 1:
        assert fold_reads([*pieces, whole]) == whole
    # rows an older widen wrote may have no figures; two rows of one range never compare figures
    assert fold_reads([((CELL, CELL + HOUR), (None, 1)), ((CELL, CELL + HOUR), (60, None))])[0] == (CELL, CELL + HOUR)
    if len(pieces) > 2:
        assert fold_reads(pieces[:1] + pieces[2:]) is None                          # a hole
    if 0 < lo < hi < 60 and (lo, hi) not in zip(bounds, bounds[1:]) and len(pieces) > 1:
        partial = ((CELL + lo * MINUTE, CELL + hi * MINUTE), (hi - lo, 1))
        overlaps_in_part = any(a < hi and lo < b and not (a <= lo and hi <= b) and not (lo <= a and b <= hi)
                               for a, b in zip(bounds, bounds[1:]))
        if overlaps_in_part:
            assert fold_reads([*pieces, partial]) is None
