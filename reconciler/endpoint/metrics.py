"""The loop's metrics, in a private :class:`prometheus_client.CollectorRegistry`.

Fed from two places: each pass's :class:`reconciler.control.loop.PassResult` (passes,
their duration, actions by kind and result, crash loops, the source's revision), and,
when scraped, the ``status --json`` document (containers by phase, their restarts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from reconciler.control.loop import PassResult
from reconciler.desired.gitrepo import public_url

__all__ = ("PHASES", "LoopMetrics")

log = logging.getLogger(__name__)

PHASES = (
    "Running",
    "Pending",
    "CrashLoopBackOff",
    "Failed",
    "InvalidSpec",
    "PortConflict",
    "Exited",
    "Terminating",
    "NameTaken",
)
"""The phases of ``status`` (:mod:`reconciler.control.status`): each is exported, 0 too,
so a series does not vanish when its last container leaves it."""

Document = Callable[[], Mapping[str, Any]]
"""Gives the ``status --json`` document of the loop's folder, now."""


class LoopMetrics:
    """The metrics of one loop; :meth:`on_pass` is the loop's ``on_pass`` (or part of it)."""

    def __init__(self, document: Document, describe: Callable[[], Mapping[str, object]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._passes = Counter("squish_passes", "Passes of the loop.", registry=self.registry)
        self._duration = Histogram(
            "squish_pass_duration_seconds",
            "How long each pass took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self._actions = Counter(
            "squish_actions",
            "Actions applied, by kind and result (ok or failed).",
            ("kind", "result"),
            registry=self.registry,
        )
        self._crashing = Gauge(
            "squish_containers_crash_looping",
            "Containers in a crash loop after the last pass.",
            registry=self.registry,
        )
        self._source = Info(
            "squish_source", "The source's revision the last pass applied.", registry=self.registry
        )
        self.registry.register(_Containers(document))
        self._describe = describe

    def on_pass(self, result: PassResult) -> None:
        self._passes.inc()
        self._duration.observe(result.duration)
        for outcome in result.outcomes:
            self._actions.labels(outcome.action.kind.value, "ok" if outcome.ok else "failed").inc()
        self._crashing.set(len(result.crashing))
        try:
            facts = _source_labels(self._describe())
        except Exception as exc:  # it runs in the loop: a source's bug must not stop it
            log.warning("the source cannot describe itself: %s: %s", type(exc).__name__, exc)
            facts = {}
        if result.revision is not None:
            facts["revision"] = result.revision
        self._source.info(facts)

    def text(self) -> bytes:
        """The registry in the Prometheus text format (a scrape reads the containers, as
        ``status`` does)."""
        return generate_latest(self.registry)


def _source_labels(described: Mapping[str, object]) -> dict[str, str]:
    """``kind``, ``url`` (without user and password) and ``ref`` of a source's
    ``describe()``, when it gives them as strings."""
    labels = {k: v for k in ("kind", "url", "ref") if isinstance(v := described.get(k), str)}
    if "url" in labels:
        labels["url"] = public_url(labels["url"])
    return labels


class _Containers(Collector):
    """Containers by phase and their restarts, read from the status document when scraped."""

    def __init__(self, document: Document) -> None:
        self._document = document

    def describe(self) -> list[Any]:
        return []  # read nothing when registered

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        rows = self._document()["containers"]
        phases = GaugeMetricFamily(
            "squish_containers", "Containers of the folder by phase.", labels=("phase",)
        )
        for phase in (*PHASES, *sorted({r["phase"] for r in rows} - set(PHASES))):
            phases.add_metric((phase,), sum(r["phase"] == phase for r in rows))
        yield phases
        restarts = CounterMetricFamily(
            "squish_container_restarts",
            "Times the runtime restarted each container since it was created.",
            labels=("container",),
        )
        for row in rows:
            restarts.add_metric((row["name"],), row["restarts"])
        yield restarts
