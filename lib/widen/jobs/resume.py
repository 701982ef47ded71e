"""``resume``: let widen migrate ships again that ``rollback`` took out (the stream and the backfill
leave a rolled-back ship alone, and count what they leave, until then)."""
from __future__ import annotations

import logging

from widen import catalog, db
from widen.config import BadInput, Config
from widen.jobs import EXIT_OK, Result, exclusive
from widen.session import resolve_connections

log = logging.getLogger(__name__)


@exclusive("rollback", reads_narrow_table=False, ships_from=None)
def run(config: Config, spark=None, ships: list[str] | None = None, **_ignored) -> Result:
    if not ships:
        raise BadInput("resume needs --ships (the rolled-back ships to migrate again)")
    config = resolve_connections(config)
    cat = config.target.catalog_schema
    with db.connection(config.target.connection) as conn:
        catalog.ensure_catalog(conn, cat)
        rolled_back = catalog.ships_in_state(conn, cat, catalog.ROLLED_BACK)
        unknown = [s for s in ships if s not in rolled_back]
        if unknown:
            raise BadInput(f"--ships: {', '.join(map(repr, unknown))} not rolled back (rolled back: "
                           f"{', '.join(map(repr, sorted(rolled_back))) or 'none'})")
        with conn.cursor() as cur:
            for ship in ships:
                catalog.set_ship_state(cur, cat, ship, None)
        conn.commit()
    for ship in ships:
        log.info("ship %r resumed: the stream writes it again; run backfill --ships for its history", ship)
    return Result("resume", EXIT_OK, {"ships": sorted(ships)},
                  "\n".join(f"resumed {s!r}: run `backfill --ships` for its history" for s in ships))
