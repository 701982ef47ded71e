"""``cutover``: switch a ship's readers from the narrow table to its wide tables, after gates that
prove it safe; ``--undo`` switches them back. ``--dry-run`` checks the gates and changes nothing.

Gates, per ship, each printed with its figures:

- **backfilled**: a backfill of the ship's whole history finished through at least the stream's
  hand-off point (the moment the stream's first offset was recorded: rows before it are the
  backfill's, rows after it the stream's).
- **stream lag**: the stream's freshness lag (now - the newest created_time it wrote) is under
  ``cutover.max_lag_seconds``.
- **reconciled**: a reconcile of the ship's whole history was clean (or repaired) through a bound
  no older than ``cutover.max_verify_age_seconds`` (or through the stream's newest rows). When it
  is older, cutover runs that reconcile itself (never repairing: a difference is for the operator).

A ship that passes is switched in one transaction: its reader view (``widen.targets.views``) is
redefined over the wide tables and its lifecycle records ``switched_at``, under the ship's
exclusive write lock and ``target.lock_timeout_seconds`` per try (``db.run_ddl``), so a reader in
a long transaction delays the switch, never the other way round for longer than one try. A ship
that fails a gate keeps reading the narrow table; the others are switched (exit 1, reasons named).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg2 import sql

from widen import errors, metrics
from widen.catalog import lifecycle, schema, ships as ship_states, views as catalog_views
from widen.catalog.layouts import load_layout
from widen.config import BadInput, Config
from widen.core import lifecycle as states
from widen.jobs import EXIT_OK, EXIT_PROBLEM, Result, job, reconcile, status
from widen.pg import db
from widen.sources import open_source
from widen.targets import open_target
from widen.targets.views import configure as reader_views

if TYPE_CHECKING:
    from psycopg2.extensions import cursor
    from pyspark.sql import SparkSession

JOB = "cutover"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CutoverOptions:
    ships: list[str] | None = None
    dry_run: bool = False
    undo: bool = False


@dataclass
class Gate:
    name: str
    ok: bool
    detail: str
    #: not passed yet, but cutover makes it pass by running a reconcile
    stale: bool = False

    def line(self) -> str:
        mark = "ok" if self.ok else "STALE" if self.stale else "FAILED"
        return f"  {self.name:<12} {mark:<7} {self.detail}"


@dataclass
class Fleet:
    """What the gates read once for every ship: now, the stream's freshness and hand-off."""
    now: dt.datetime
    lag: float | None
    stream: str
    handoff: dt.datetime | None
    #: the newest bound a reconcile can prove now (the stream's newest rows, less its settle time)
    bound: dt.datetime | None


def _fleet(cur: cursor, config: Config) -> Fleet:
    cat = config.target.catalog_schema
    cur.execute("SELECT now()")
    now = cur.fetchone()[0]
    queries = [q for q in status.streams(cur, cat) if q["newest_created_time"]]
    if not queries:
        return Fleet(now, None, "no stream has written a batch yet (start the stream: it serves the ship after the "
                     "switch)", None, None)
    live = max(queries, key=lambda q: q["committed_at"])
    cur.execute(sql.SQL("SELECT recorded_at, start_offset FROM {} WHERE query_name = %s ORDER BY recorded_at DESC "
                        "LIMIT 1").format(sql.Identifier(cat, "stream_starts")), (live["query_name"],))
    recorded_at, offset = cur.fetchone()
    moment = json.loads(offset).get("t")
    handoff = min(recorded_at, dt.datetime.fromisoformat(moment)) if moment else recorded_at
    newest = live["newest_created_time"]
    lag = max(0.0, (now - newest).total_seconds())
    bound = min(newest, now) - dt.timedelta(seconds=config.stream.settle_seconds)
    return Fleet(now, lag, f"{live['query_name']} batch {live['last_batch']} at {live['committed_at']:%H:%M:%S}Z",
                 handoff, bound)


def _facts(cur: cursor, cat: str, ships: list[str]) -> dict[str, dict[str, Any]]:
    cur.execute(sql.SQL("SELECT l.*, (SELECT max(failed_at) FROM {f} f WHERE f.ship_id = l.ship_id) AS last_stream_failure "
                        "FROM {l} l WHERE l.ship_id = ANY(%s)").format(
        l=sql.Identifier(cat, "ship_lifecycle"), f=sql.Identifier(cat, "stream_failures")), (ships,))
    names = [d.name for d in cur.description]
    return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def _at(moment: dt.datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}Z"


def gates(config: Config, fleet: Fleet, f: dict[str, Any]) -> list[Gate]:
    """The ship's gates from its lifecycle facts and the fleet's stream."""
    out = []
    through = f.get("backfilled_through")
    if not f.get("backfilled_at"):
        out.append(Gate("backfilled", False, f"not backfilled (state {f['state']}): run backfill"))
    elif fleet.handoff is None:
        out.append(Gate("backfilled", False, f"through {_at(through)}, but {fleet.stream}"))
    else:
        ok = through is not None and through >= fleet.handoff
        out.append(Gate("backfilled", ok, f"through {_at(through)} {'>=' if ok else '<'} the stream's hand-off "
                        f"{_at(fleet.handoff)}" + ("" if ok else ": run backfill again (the stream is running)")))
    limit = config.cutover.max_lag_seconds
    if fleet.lag is None:
        out.append(Gate("stream lag", False, fleet.stream))
    else:
        ok = fleet.lag < limit
        out.append(Gate("stream lag", ok, f"{fleet.lag:.1f} s {'<' if ok else '>='} {limit:g} s "
                        f"(cutover.max_lag_seconds; {fleet.stream})" + ("" if ok else ": is the stream running?")))
    out.append(_verified_gate(config, fleet, f))
    return out


def _verified_gate(config: Config, fleet: Fleet, f: dict[str, Any]) -> Gate:
    result, through = f.get("last_reconcile_result"), f.get("verified_through")
    max_age = config.cutover.max_verify_age_seconds
    if result in ("mismatch", "error"):
        return Gate("reconciled", False, f"the last reconcile ({_at(f['last_reconcile_at'])}) "
                    f"{'found differences' if result == 'mismatch' else 'could not check it'}: reconcile --repair "
                    "--ships it, then cutover again")
    if through is None:
        return Gate("reconciled", False, "never reconciled clean", stale=True)
    failed = f.get("last_stream_failure")
    if failed is not None and (f.get("verified_at") is None or failed > f["verified_at"]):
        return Gate("reconciled", False, f"the stream could not write some of its rows at {_at(failed)}, after "
                    "the last clean reconcile", stale=True)
    if f.get("verified_from") is not None:
        return Gate("reconciled", False, f"verified only from {_at(f['verified_from'])}, not its whole history",
                    stale=True)
    fresh = through >= fleet.now - dt.timedelta(seconds=max_age) or (fleet.bound is not None and through >= fleet.bound)
    age = (fleet.now - through).total_seconds()
    return Gate("reconciled", fresh, f"{result} through {_at(through)} ({age:.0f} s old; "
                f"cutover.max_verify_age_seconds {max_age:g})", stale=not fresh)


@job(JOB, CutoverOptions, reads_narrow_table=False, ships_from=None)
def run(config: Config, spark: SparkSession | None, options: CutoverOptions) -> Result:
    began = time.monotonic()
    if not options.ships:
        raise BadInput("cutover needs --ships (a fleet is switched in waves you name)")
    ships = list(dict.fromkeys(options.ships))
    cat = config.target.catalog_schema
    with db.connection(config.target.connection) as conn:
        if options.dry_run and not schema.open_existing(conn, cat):
            raise BadInput(f"--ships: {schema.NO_CATALOG} ({cat!r} in {config.target.connection.describe()})")
        if not options.dry_run:
            schema.migrate(conn, cat)
        with conn.cursor() as cur:
            facts = _facts(cur, cat, ships)
            fleet = _fleet(cur, config)
        conn.rollback()
    unknown = [s for s in ships if s not in facts]
    if unknown:
        raise BadInput(f"--ships: no ship {', '.join(map(repr, unknown[:10]))} in the catalog's lifecycle "
                       f"({cat}.ship_lifecycle: plan puts ships there)")
    source = open_source(config.source)
    target = open_target(config.target, spark)
    views = reader_views(target, config, source)
    report: dict[str, dict[str, Any]] = {s: {"state": facts[s]["state"]} for s in ships}
    if options.undo:
        todo = []
        for ship in ships:
            if facts[ship]["state"] == states.SWITCHED:
                todo.append(ship)
            else:
                report[ship]["skipped"] = f"not switched (state {facts[ship]['state']}): nothing to undo"
    else:
        todo = _check(config, spark, options, ships, facts, fleet, report)
    for ship in todo:
        if options.dry_run:
            report[ship]["would"] = "switch back to the narrow table" if options.undo else "switch to the wide tables"
            continue
        def failed(err: BaseException, ship: str = ship) -> None:
            report[ship]["failed"] = errors.describe(err)
            log.warning("ship %r not switched: %s", ship, report[ship]["failed"])

        with errors.one_ship(failed, errors.any_failure):
            report[ship]["view"] = _switch(config, views, ship, undo=options.undo)
            report[ship]["switched"] = "back to the narrow table" if options.undo else "to the wide tables"
    return _result(options, report, views, time.monotonic() - began)


def _check(config: Config, spark: SparkSession | None, options: CutoverOptions, ships: list[str],
           facts: dict[str, dict[str, Any]], fleet: Fleet, report: dict[str, dict[str, Any]]) -> list[str]:
    """Evaluate every ship's gates (reconciling the ships only a stale verification holds back);
    returns the ships to switch, the reasons of the others in ``report``."""
    checked = {}
    for ship in ships:
        state = facts[ship]["state"]
        if state == states.SWITCHED:
            report[ship]["skipped"] = f"already switched ({_at(facts[ship]['switched_at'])})"
        elif state == states.ROLLED_BACK:
            report[ship]["refused"] = ["rolled back: resume, backfill and reconcile it first"]
        else:
            checked[ship] = gates(config, fleet, facts[ship])
    stale = [s for s, g in checked.items() if all(x.ok or x.stale for x in g) and any(x.stale for x in g)]
    if stale and not options.dry_run and fleet.bound is not None:
        log.info("reconciling %d ships through %s before the switch", len(stale), _at(fleet.bound))
        result = reconcile.run(config, spark, reconcile.ReconcileOptions(ships=stale, end=fleet.bound))
        for ship in stale:
            report[ship]["reconciled"] = {"exit_code": result.exit_code, "through": fleet.bound.isoformat()}
        with db.connection(config.target.connection) as conn, conn.cursor() as cur:
            fresh = _facts(cur, config.target.catalog_schema, stale)
        for ship in stale:
            checked[ship][-1] = _verified_gate(config, fleet, fresh[ship])
    todo = []
    for ship, ship_gates in checked.items():
        report[ship]["gates"] = [{"gate": g.name, "ok": g.ok, "stale": g.stale, "detail": g.detail} for g in ship_gates]
        hard = [g for g in ship_gates if not g.ok and not (g.stale and options.dry_run)]
        if hard:
            report[ship]["refused"] = [f"{g.name}: {g.detail}" for g in hard]
        else:
            todo.append(ship)
    return todo


def _switch(config: Config, views: Any, ship: str, undo: bool) -> str | None:
    """Switch one ship in one DDL transaction (view and lifecycle together); the view's name."""
    cat = config.target.catalog_schema
    tgt = config.target

    def switch(cur: cursor) -> str | None:
        ship_states.lock_ship_exclusive(cur, ship)
        # the facts again, under the lock: a reconcile that found a difference since the gates were
        # read (or a rollback) keeps the ship where it is
        cur.execute(sql.SQL("SELECT state, verified_through, last_reconcile_result FROM {} WHERE ship_id = %s "
                            "FOR UPDATE").format(sql.Identifier(cat, "ship_lifecycle")), (ship,))
        now, verified, result = cur.fetchone()
        if undo and now != states.SWITCHED or not undo and (
                now not in (states.VERIFIED, states.LIVE, states.BACKFILLED) or verified is None
                or result not in ("clean", "repaired")):
            raise RuntimeError(f"its lifecycle changed while the gates were checked (state {now}, last reconcile "
                               f"{result}): run cutover again")
        name = None
        if views is not None:
            layout = load_layout(conn, cat, ship)
            schema_name, view = views.switch(conn, layout, catalog_views.NARROW if undo else catalog_views.WIDE)
            name = sql.Identifier(schema_name, view).as_string(conn)
        lifecycle.record(cur, cat, ship, JOB, {"undo": undo, "view": name},
                         switched_at=None if undo else lifecycle.NOW)
        return name

    with db.connection(tgt.connection) as conn:
        return db.run_ddl(conn, tgt, switch, [], f"cutover of ship {ship!r}",
                          holders=lambda: db.advisory_holders(conn, "widen.ship", ship, "the ship's write lock"))


def _result(options: CutoverOptions, report: dict[str, dict[str, Any]], views: Any, seconds: float) -> Result:
    lines = []
    for ship, r in report.items():
        lines.append(f"{ship}: {r['state']}")
        lines += [Gate(g["gate"], g["ok"], g["detail"], g["stale"]).line() for g in r.get("gates", [])]
        if "reconciled" in r:
            lines.append(f"  (reconciled through {r['reconciled']['through']} first)")
        for key, text in (("skipped", "skipped: {}"), ("would", "dry run: would {}"),
                          ("failed", "NOT SWITCHED: {}"), ("switched", "switched {}")):
            if key in r:
                lines.append("  " + text.format(r[key]) + (f" ({r['view']})" if key == "switched" and r.get("view")
                                                            else ""))
        if "refused" in r:
            lines.append("  NOT SWITCHED: " + "; ".join(r["refused"]))
    if views is None:
        lines.append("no reader views (cutover.views off, a Delta target, or the narrow table not readable from the "
                     "target database): applications route readers by ship_lifecycle.state")
    refused = {s: r["refused"] for s, r in report.items() if "refused" in r}
    failed = {s: r["failed"] for s, r in report.items() if "failed" in r}
    if not options.dry_run:
        events = metrics.current(JOB).counter("events", "ships switched, switched back, refused or failed, "
                                                        "by ship", ["ship", "event"])
        for ship, r in report.items():
            event = ("switched_back" if options.undo else "switched") if "switched" in r else \
                "refused" if "refused" in r else "failed" if "failed" in r else None
            if event:
                events.labels(ship, event).inc()
    summary = {"ships": len(report), "dry_run": options.dry_run, "undo": options.undo,
               "switched": sorted(s for s, r in report.items() if "switched" in r),
               "would_switch": sorted(s for s, r in report.items() if "would" in r),
               "refused": refused, "failed": failed,
               "skipped": {s: r["skipped"] for s, r in report.items() if "skipped" in r},
               "views": {s: r["view"] for s, r in report.items() if r.get("view")},
               "gates": {s: r["gates"] for s, r in report.items() if "gates" in r},
               "seconds": round(seconds, 2)}
    return Result(JOB, EXIT_PROBLEM if refused or failed else EXIT_OK, summary, "\n".join(lines))
