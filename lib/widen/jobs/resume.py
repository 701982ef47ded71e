"""``resume``: let widen migrate ships again that ``rollback`` took out (the stream and the backfill
leave a rolled-back ship alone, and count what they leave, until then)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from widen import metrics
from widen.catalog import lifecycle, schema, ships as ship_states
from widen.config import BadInput, Config
from widen.core import lifecycle as core_lifecycle
from widen.jobs import EXIT_OK, Result, job
from widen.pg import db

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumeOptions:
    ships: list[str] | None = None


@job("rollback", ResumeOptions, reads_narrow_table=False, ships_from=None, metrics_name="resume")
def run(config: Config, spark: SparkSession, options: ResumeOptions) -> Result:
    if not options.ships:
        raise BadInput("resume needs --ships (the rolled-back ships to migrate again)")
    cat = config.target.catalog_schema
    with db.connection(config.target.connection) as conn:
        schema.migrate(conn, cat)
        rolled_back = ship_states.ships_in_state(conn, cat, ship_states.ROLLED_BACK)
        unknown = [s for s in options.ships if s not in rolled_back]
        if unknown:
            raise BadInput(f"--ships: {', '.join(map(repr, unknown))} not rolled back (rolled back: "
                           f"{', '.join(map(repr, sorted(rolled_back))) or 'none'})")
        with conn.cursor() as cur:
            for ship in options.ships:
                ship_states.set_ship_state(cur, cat, ship, None)
                lifecycle.record(cur, cat, ship, "resume", None, **dict.fromkeys(core_lifecycle.FACTS))
        conn.commit()
    events = metrics.current("resume").counter("events", "ships resumed, by ship", ["ship", "event"])
    for ship in options.ships:
        events.labels(ship, "resumed").inc()
        log.info("ship %r resumed: the stream writes it again; run backfill --ships for its history", ship)
    return Result("resume", EXIT_OK, {"ships": sorted(options.ships)},
                  "\n".join(f"resumed {s!r}: run `backfill --ships` for its history" for s in options.ships))
