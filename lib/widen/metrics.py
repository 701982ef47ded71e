"""Prometheus metrics of every job, for batch jobs pushed to a Pushgateway and/or written for
node_exporter's textfile collector.

A job run holds one ``JobMetrics`` (the ``job`` decorator opens it inside the job's lock, so a
second run refused as busy never overwrites the running one's figures). Every run exports

    widen_<job>_running                      1 while it runs, 0 once it ended
    widen_<job>_start_timestamp_seconds      when it started (Unix time)
    widen_<job>_end_timestamp_seconds        when it ended (absent while it runs)
    widen_<job>_exit_code                    0 ok, 1 a problem, 2 bad input (absent while it runs)

and the job adds its own (``counter``/``gauge``; see the README's metrics table). The figures go
out every ``metrics.push_seconds`` while the job runs and once when it ends: to
``metrics.pushgateway`` (grouping key ``job="widen_<job>"``, ``instance`` = ``metrics.instance``,
by default the host name) and/or to ``<metrics.textfile_dir>/widen_<job>[_<instance>].prom``
(written atomically). A Pushgateway that does not answer is a warning, never a failed job.
"""
from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, write_to_textfile

from widen import errors

if TYPE_CHECKING:
    from collections.abc import Sequence

    from widen.config import MetricsConfig

log = logging.getLogger(__name__)
_current: contextvars.ContextVar[JobMetrics | None] = contextvars.ContextVar("widen_metrics", default=None)


class JobMetrics:
    """One job run's registry and where it goes."""

    def __init__(self, job: str, cfg: MetricsConfig | None):
        self.job = job
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self.instance = (cfg.instance if cfg and cfg.instance else socket.gethostname())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._push_failing = False
        prefix = f"widen_{job}"
        self.running = Gauge(f"{prefix}_running", f"1 while a {job} runs, 0 once it ended", registry=self.registry)
        self.start_time = Gauge(f"{prefix}_start_timestamp_seconds", f"when the {job} started (Unix time)",
                                registry=self.registry)
        self._end_time: Gauge | None = None
        self._exit_code: Gauge | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cfg and (self.cfg.pushgateway or self.cfg.textfile_dir))

    @property
    def textfile(self) -> str | None:
        if not (self.cfg and self.cfg.textfile_dir):
            return None
        suffix = f"_{self.cfg.instance}" if self.cfg.instance else ""
        return os.path.join(self.cfg.textfile_dir, f"widen_{self.job}{_safe(suffix)}.prom")

    # -- the job's own metrics -------------------------------------------------------------------
    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        """``widen_<job>_<name>`` (exported with ``_total``)."""
        return Counter(f"widen_{self.job}_{name}", help_text, list(labels), registry=self.registry)

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(f"widen_{self.job}_{name}", help_text, list(labels), registry=self.registry)

    def attach(self, registry: CollectorRegistry) -> None:
        """Send ``registry``'s metrics along with the job's (the stream's per-query registry)."""
        self.registry.register(_Forward(registry))

    def detach(self, registry: CollectorRegistry) -> None:
        for collector in list(self.registry._collector_to_names):  # noqa: SLF001 - no public listing
            if isinstance(collector, _Forward) and collector.registry is registry:
                self.registry.unregister(collector)

    # -- a run -----------------------------------------------------------------------------------
    def start(self) -> None:
        self.running.set(1)
        self.start_time.set(time.time())
        self.flush()
        if self.enabled and self.cfg is not None:
            self._thread = threading.Thread(target=self._loop, args=(self.cfg.push_seconds,),
                                            name="widen-metrics", daemon=True)
            self._thread.start()

    def finish(self, exit_code: int) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._end_time = self._end_time or Gauge(f"widen_{self.job}_end_timestamp_seconds",
                                                 f"when the {self.job} ended (Unix time)", registry=self.registry)
        self._exit_code = self._exit_code or Gauge(f"widen_{self.job}_exit_code",
                                                   "0 ok, 1 a problem was found or the job failed, 2 bad input",
                                                   registry=self.registry)
        self._end_time.set(time.time())
        self._exit_code.set(exit_code)
        self.running.set(0)
        self.flush()

    def flush(self) -> None:
        """Write the textfile and push, as configured (safe from any thread)."""
        if not self.enabled or self.cfg is None:
            return
        with self._lock:
            if self.textfile:
                try:
                    os.makedirs(self.cfg.textfile_dir or ".", exist_ok=True)
                    write_to_textfile(self.textfile, self.registry)
                except OSError as err:
                    log.warning("metrics: cannot write %s (%s)", self.textfile, err.strerror or err)
            if self.cfg.pushgateway:
                self._push()

    def _push(self) -> None:
        assert self.cfg is not None and self.cfg.pushgateway
        try:
            push_to_gateway(self.cfg.pushgateway, job=f"widen_{self.job}", registry=self.registry,
                            grouping_key={"instance": self.instance}, timeout=self.cfg.push_timeout_seconds)
        except Exception as err:  # noqa: BLE001 - monitoring never fails the job
            if not self._push_failing:
                log.warning("metrics: the Pushgateway %s did not take the %s's metrics (%s); the job goes on",
                            self.cfg.pushgateway, self.job, errors.describe(err))
            self._push_failing = True
            return
        if self._push_failing:
            log.info("metrics: the Pushgateway %s takes the metrics again", self.cfg.pushgateway)
        self._push_failing = False

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self.flush()


class _Forward:
    """A collector that yields another registry's metrics."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        return self.registry.collect()


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in text)


def open_run(job: str, cfg: MetricsConfig | None) -> contextvars.Token:
    """Start ``job``'s metrics and make them ``current()`` (the ``job`` decorator's side)."""
    metrics = JobMetrics(job, cfg)
    token = _current.set(metrics)
    metrics.start()
    return token


def close_run(token: contextvars.Token, exit_code: int) -> None:
    metrics = _current.get()
    try:
        if metrics is not None:
            metrics.finish(exit_code)
    finally:
        _current.reset(token)


def current(job: str = "job") -> JobMetrics:
    """The running job's metrics (a registry going nowhere when a job is called outside ``run``)."""
    metrics = _current.get()
    return metrics if metrics is not None else JobMetrics(job, None)
