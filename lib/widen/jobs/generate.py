"""``generate``: fill the source's narrow table with a synthetic fleet (demo, tests, benchmarks)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from widen.config import BadInput, Config
from widen.jobs import Result, job
from widen.sources import generate

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class FleetOptions:
    """The shape of a synthetic fleet (generate, demo)."""
    fleet_ships: int = 4
    channels: int = 50
    hours: float = 6.0
    seed: int = 7


@dataclass(frozen=True)
class GenerateOptions(FleetOptions):
    start: dt.datetime | None = None
    #: empty the narrow table first (only a table generate made)
    replace: bool = False
    #: empty it even if generate did not make it (a loud, explicit override)
    replace_any_table: bool = False


@job("generate", GenerateOptions, reads_narrow_table=False, ships_from=None, lock=False)
def run(config: Config, spark: SparkSession, options: GenerateOptions) -> Result:
    """Refuses (exit 2) to add to a narrow table that already has rows unless ``replace``."""
    try:
        made = generate.generate_fleet(config.source.connection, config.source.schema, config.source.table,
                                       ships=options.fleet_ships, channels=options.channels, start=options.start,
                                       hours=options.hours, seed=options.seed,
                                       replace=options.replace or options.replace_any_table,
                                       replace_any_table=options.replace_any_table)
    except generate.FleetExists as err:
        raise BadInput(str(err)) from None
    report = (f"generated {made['rows']:,} narrow rows: {made['ships']} ships x {made['channels']} "
              f"channels x {options.hours} h at 15 s in {made['seconds']} s")
    return Result("generate", summary=made, report=report)
