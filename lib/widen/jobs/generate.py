"""``generate``: fill the source's narrow table with a synthetic fleet (demo, tests, benchmarks)."""
from __future__ import annotations

from widen import generate
from widen.config import Config
from widen.jobs import Result
from widen.session import resolve_connections


def run(config: Config, spark=None, fleet_ships: int = 4, channels: int = 50, hours: float = 6.0,
        seed: int = 7, start=None, **_ignored) -> Result:
    config = resolve_connections(config)
    made = generate.generate_fleet(config.source.connection, config.source.schema, config.source.table,
                                   ships=fleet_ships, channels=channels, start=start, hours=hours,
                                   seed=seed)
    report = (f"generated {made['rows']:,} narrow rows: {made['ships']} ships x {made['channels']} "
              f"channels x {hours} h at 15 s in {made['seconds']} s")
    return Result("generate", summary=made, report=report)
