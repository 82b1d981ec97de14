"""Prometheus metrics for `lambdaflow serve`'s `/metrics`: the serving process's own, and both
workers' and the batch layer's, read at each scrape from the files they publish.

The workers write a status file per partition every second (see :mod:`lambdaflow.core.counters`
for the counts in it), so one scrape of the serving process covers every worker on every host
that shares the data directory, with no port per worker to find. A worker that stopped keeps its
last figures; ``lambdaflow_status_age_seconds`` and ``/healthz`` say how old they are.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from lambdaflow.core.boundary import read_manifest
from lambdaflow.core.config import Settings
from lambdaflow.serving.status import LAYERS, WorkerFigures, seconds_of, worker_statuses

PREFIX = "lambdaflow"


class PipelineCollector(Collector):
    """The workers' and the batch layer's figures, from their files, at each scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        yield from self._workers()
        yield from self._snapshots()
        yield from self._batch()

    def _workers(self) -> Iterator[Metric]:
        labels = ["layer", "partition"]
        family: dict[str, Any] = {
            "offset": GaugeMetricFamily(
                f"{PREFIX}_consumer_offset", "The next offset the worker will commit from.", labels=labels
            ),
            "end": GaugeMetricFamily(
                f"{PREFIX}_consumer_end_offset",
                "The partition's end offset when the worker last looked.",
                labels=labels,
            ),
            "lag": GaugeMetricFamily(
                f"{PREFIX}_consumer_lag", "Messages in the partition not yet committed by the worker.", labels=labels
            ),
            "messages": CounterMetricFamily(
                f"{PREFIX}_consumer_messages",
                "Messages read and handled since the worker took the partition.",
                labels=labels,
            ),
            "events": CounterMetricFamily(f"{PREFIX}_consumer_events", "Valid events among them.", labels=labels),
            "rejects": CounterMetricFamily(
                f"{PREFIX}_consumer_rejects",
                "Messages that broke the event contract, by reason.",
                labels=[*labels, "reason"],
            ),
            "batch": SummaryMetricFamily(
                f"{PREFIX}_micro_batch_seconds",
                "Time from a poll's records being handed to the worker to being done with.",
                labels=labels,
            ),
            "commit": SummaryMetricFamily(
                f"{PREFIX}_commit_seconds",
                "Time of a commit: the speed state and its snapshot, or a raw file and its manifest.",
                labels=labels,
            ),
            "last_commit": GaugeMetricFamily(
                f"{PREFIX}_last_commit_timestamp_seconds", "When the worker last committed (published).", labels=labels
            ),
            "delay": GaugeMetricFamily(
                f"{PREFIX}_commit_delay_seconds",
                "From the Kafka timestamp of the last committed record to its commit.",
                labels=labels,
            ),
            "age": GaugeMetricFamily(
                f"{PREFIX}_status_age_seconds",
                "Seconds since the worker last wrote its status (every second while it runs).",
                labels=labels,
            ),
            "watermark": GaugeMetricFamily(
                f"{PREFIX}_archiver_watermark_timestamp_seconds",
                "The archiver's watermark: events up to here have arrived, as far as this partition knows.",
                labels=["partition"],
            ),
        }
        now = time.time()
        for partition, documents in worker_statuses(self.settings).items():
            for layer in LAYERS:
                document = documents[layer]
                if not document:
                    continue
                values = [layer, str(partition)]
                figures = WorkerFigures.of(document, now)
                for name, value in (
                    ("offset", document.get("next_offset")),
                    ("end", document.get("end_offset")),
                    ("lag", figures.lag),
                    ("age", figures.status_age),
                    ("last_commit", figures.last_commit),
                    ("delay", figures.commit_delay),
                ):
                    if value is not None:
                        family[name].add_metric(values, value)
                watermark = seconds_of(document.get("watermark"))
                if layer == "archiver" and watermark is not None:
                    family["watermark"].add_metric([str(partition)], watermark)
                counters = document.get("counters")
                if counters:
                    self._counters(family, values, counters)
        yield from family.values()

    @staticmethod
    def _counters(family: dict[str, Any], values: list[str], counters: dict) -> None:
        created = seconds_of(counters.get("started_at"))
        family["messages"].add_metric(values, counters["messages"], created=created)
        family["events"].add_metric(values, counters["events"], created=created)
        for reason, count in sorted(counters["rejects"].items()):
            family["rejects"].add_metric([*values, reason], count, created=created)
        family["batch"].add_metric(values, counters["batches"], counters["batch_seconds"])
        family["commit"].add_metric(values, counters["commits"], counters["commit_seconds"])

    def _snapshots(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            f"{PREFIX}_snapshot_age_seconds",
            "Seconds since the speed layer last replaced the partition's snapshot.",
            labels=["partition"],
        )
        for partition, age in self.settings.speed_files.snapshot_ages().items():
            family.add_metric([partition], age)
        yield family

    def _batch(self) -> Iterator[Metric]:
        manifest = read_manifest(self.settings.documents)
        days = manifest.get("days", {})
        built = GaugeMetricFamily(f"{PREFIX}_batch_days_built", "Days the batch layer has published.")
        built.add_metric([], len(days))
        yield built
        boundary = seconds_of(manifest.get("boundary"))
        if boundary is not None:
            family = GaugeMetricFamily(
                f"{PREFIX}_serving_boundary_timestamp_seconds",
                "The serving boundary: hours before it are served by the batch layer.",
            )
            family.add_metric([], boundary)
            yield family
        last = max((seconds_of(entry.get("built_at")) or 0.0 for entry in days.values()), default=0.0)
        if last:
            family = GaugeMetricFamily(
                f"{PREFIX}_batch_last_build_timestamp_seconds", "When the last published day was built."
            )
            family.add_metric([], last)
            yield family


class ServingMetrics:
    """The registry `/metrics` renders: the serving process's requests, its process figures, and the
    pipeline's files."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(PipelineCollector(settings))
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

    def observe(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route, str(code)).inc()
        self.latency.labels(route).observe(seconds)
