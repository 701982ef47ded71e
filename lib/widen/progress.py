"""Progress lines for long jobs: done of total, rate and ETA, logged every few seconds."""
from __future__ import annotations

import logging
import threading
import time


class Progress:
    def __init__(self, label: str, total_units: int, total_rows: int, every_seconds: float):
        self.label = label
        self.log = logging.getLogger(f"widen.jobs.{label}")
        self.total_units = total_units
        self.total_rows = total_rows
        self.every = every_seconds
        self.units = 0
        self.rows = 0
        self.failed = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="widen-progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.print_line()

    def add(self, rows: int, failed: bool = False) -> None:
        with self._lock:
            self.units += 1
            self.rows += rows
            self.failed += int(failed)

    def figures(self) -> tuple[float, float | None, float, float]:
        """(rows per second, seconds left or None while unknown, done fraction, seconds elapsed)."""
        with self._lock:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            rate = self.rows / elapsed
            left = max(self.total_rows - self.rows, 0)
            eta = left / rate if rate > 0 else (0.0 if not left else None)
            done = self.rows / self.total_rows if self.total_rows else 1.0
            return rate, eta, done, elapsed

    def line(self) -> str:
        rate, eta, done, elapsed = self.figures()
        failed = f", {self.failed} failed" if self.failed else ""
        return (f"chunks {self.units}/{self.total_units}{failed}, rows "
                f"{self.rows:,}/{self.total_rows:,} ({100 * done:.1f}%), {rate:,.0f} rows/s, "
                f"elapsed {elapsed:.0f}s, ETA {'?' if eta is None else f'{eta:.0f}s'}")

    def print_line(self) -> None:
        self.log.info(self.line())

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.print_line()
