"""Prometheus metrics of every job, for batch jobs pushed to a Pushgateway and/or written for
node_exporter's textfile collector.

A job run holds one ``JobMetrics`` (the ``job`` decorator opens it inside the job's lock, so a
second run refused as busy never overwrites the running one's figures). Every run exports

    widen_<job>_running                      1 while it runs, 0 once it ended
    widen_<job>_start_timestamp_seconds      when it started (Unix time)
    widen_<job>_end_timestamp_seconds        when it ended (absent while it runs)
    widen_<job>_exit_code                    0 ok, 1 a problem, 2 bad input (absent while it runs)

and the job adds its own (``counter``/``gauge``; see the metrics table in docs/operating.md). The figures go
out every ``metrics.push_seconds`` while the job runs (and soon after ``poke``) and once when it
ends: to ``metrics.pushgateway`` and/or to ``<metrics.textfile_dir>/widen_<job>_<selection>[_<instance>].prom``
(written atomically). A run's group is ``job="widen_<job>"``, ``instance`` (``metrics.instance``, by
default the host name) and ``selection``: ``all`` for a run over every ship, else ``ships-<hash>`` of
the ships it was given, so runs over other ships (a cutover's own reconcile of a few ships, two
backfills side by side) never replace each other's figures. In a textfile every series carries the
``selection`` label too: node_exporter merges all files of its directory, and two files with the
same series would make it drop them. A Pushgateway that does not answer, or
a textfile that cannot be written, is one warning, never a failed job.
"""
from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, push_to_gateway, write_to_textfile
from prometheus_client.metrics_core import Metric

from widen import errors

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from widen.config import MetricsConfig

log = logging.getLogger(__name__)
disable_created_metrics()       # no ``_created`` series beside every per-ship counter
_current: contextvars.ContextVar[JobMetrics | None] = contextvars.ContextVar("widen_metrics", default=None)


class JobMetrics:
    """One job run's registry and where it goes."""

    def __init__(self, job: str, cfg: MetricsConfig | None, ships: Sequence[str] | None = None):
        self.job = job
        self.cfg = cfg
        self.registry = CollectorRegistry()
        self.instance = (cfg.instance if cfg and cfg.instance else socket.gethostname())
        self.selection = selection(ships)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: set[str] = set()      # "push", "textfile": warned once until it works again
        self._attached: _Forward | None = None
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
        return os.path.join(self.cfg.textfile_dir, f"widen_{self.job}_{self.selection}{_safe(suffix)}.prom")

    # -- the job's own metrics -------------------------------------------------------------------
    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        """``widen_<job>_<name>`` (exported with ``_total``)."""
        return Counter(f"widen_{self.job}_{name}", help_text, list(labels), registry=self.registry)

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(f"widen_{self.job}_{name}", help_text, list(labels), registry=self.registry)

    def attach(self, registry: CollectorRegistry) -> None:
        """Send ``registry``'s metrics along with the job's, in place of the one attached before
        (the stream's per-query registry: a restarted query brings a new one; the last stays
        attached, so the run's final push still holds the stream's figures)."""
        with self._lock:
            if self._attached is not None:
                self.registry.unregister(self._attached)
            self._attached = _Forward(registry)
            self.registry.register(self._attached)

    def poke(self) -> None:
        """Send the figures soon, from the background thread (never blocks the caller)."""
        self._wake.set()

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
        self._wake.set()
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
                path = self.textfile
                def write_textfile(path: str = path) -> None:
                    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                    write_to_textfile(path, self._textfile_registry)

                self._attempt("textfile", f"cannot write {path}", write_textfile)
            if self.cfg.pushgateway:
                gateway = self.cfg.pushgateway
                self._attempt("push", f"the Pushgateway {gateway} did not take the {self.job}'s metrics",
                              lambda: push_to_gateway(
                                  gateway, job=f"widen_{self.job}", registry=self.registry,
                                  grouping_key={"instance": self.instance, "selection": self.selection},
                                  timeout=self.cfg.push_timeout_seconds if self.cfg else 5.0))

    @property
    def _textfile_registry(self) -> CollectorRegistry:
        """The run's metrics with its ``selection`` as a label: node_exporter merges every file of
        its directory into one scrape, where the file name is lost (a Pushgateway keeps it in the
        group instead, so the pushed series go without it)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Labelled(self.registry, {"selection": self.selection}))
        return registry

    def _attempt(self, what: str, failure: str, action: Callable[[], object]) -> None:
        """``action``; a failure is one warning until it works again (monitoring never fails a job)."""
        try:
            action()
        except Exception as err:  # noqa: BLE001 - monitoring never fails the job
            if what not in self._failing:
                log.warning("metrics: %s (%s); the job goes on", failure, errors.describe(err))
            self._failing.add(what)
            return
        if what in self._failing:
            log.info("metrics: %s works again", what)
        self._failing.discard(what)

    def _loop(self, every: float) -> None:
        while True:
            self._wake.wait(every)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.flush()


class _Forward:
    """A collector that yields another registry's metrics."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        return self.registry.collect()


class _Labelled:
    """A collector that yields another registry's metrics with ``labels`` added to every sample."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]):
        self.registry = registry
        self.labels = labels

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [s._replace(labels={**s.labels, **self.labels}) for s in family.samples]
            yield labelled


def selection(ships: Sequence[str] | None) -> str:
    """``all``, or ``ships-<hash>`` of the given ships (order and repeats do not matter)."""
    if not ships:
        return "all"
    digest = hashlib.sha256("\x1f".join(sorted(set(ships))).encode()).hexdigest()
    return f"ships-{digest[:10]}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in text)


def open_run(job: str, cfg: MetricsConfig | None, ships: Sequence[str] | None = None) -> contextvars.Token:
    """Start ``job``'s metrics and make them ``current()`` (the ``job`` decorator's side)."""
    metrics = JobMetrics(job, cfg, ships)
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
