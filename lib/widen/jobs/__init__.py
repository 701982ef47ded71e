"""Job orchestration. A job is ``run(config, spark=None, **options) -> Result``."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_BAD_INPUT = 2


@dataclass
class Result:
    job: str
    exit_code: int = EXIT_OK
    summary: dict = field(default_factory=dict)
    report: str = ""

    def json_line(self) -> str:
        status = {EXIT_OK: "ok", EXIT_PROBLEM: "problem", EXIT_BAD_INPUT: "bad_input"}[self.exit_code]
        return json.dumps({"job": self.job, "status": status, **self.summary}, default=str,
                          sort_keys=False)
