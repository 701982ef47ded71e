"""``generate``: fill the source's narrow table with a synthetic fleet (demo, tests, benchmarks)."""
from __future__ import annotations

from widen import generate
from widen.config import BadInput, Config
from widen.jobs import Result
from widen.session import resolve_connections


def run(config: Config, spark=None, fleet_ships: int = 4, channels: int = 50, hours: float = 6.0,
        seed: int = 7, start=None, replace: bool = False, replace_any_table: bool = False, **_ignored) -> Result:
    """Refuses (exit 2) to add to a narrow table that already has rows unless ``replace``."""
    config = resolve_connections(config)
    try:
        made = generate.generate_fleet(config.source.connection, config.source.schema,
                                       config.source.table, ships=fleet_ships, channels=channels,
                                       start=start, hours=hours, seed=seed, replace=replace,
                                       replace_any_table=replace_any_table)
    except generate.FleetExists as err:
        raise BadInput(str(err)) from None
    report = (f"generated {made['rows']:,} narrow rows: {made['ships']} ships x {made['channels']} "
              f"channels x {hours} h at 15 s in {made['seconds']} s")
    return Result("generate", summary=made, report=report)
