"""Settings, read from the environment once.

Every part of lambdaflow takes its configuration from one frozen
:class:`Settings`; :func:`settings` parses the process environment the first
time it is called and returns the same object after that. The defaults run on
one machine with no setup: the embedded broker and files under ``data/``.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from lambdaflow.core.documents import Documents
from lambdaflow.core.errors import ConfigError
from lambdaflow.core.layout import Layout
from lambdaflow.core.speed_files import SpeedFiles
from lambdaflow.core.storage import Storage

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_BOOTSTRAP = re.compile(r"[^\s,:]+:\d{1,5}(,[^\s,:]+:\d{1,5})*")
_DIGITS = re.compile(r"[0-9]+")
MAX_LATENESS_MINUTES = 7 * 24 * 60
"""A week: an allowed lateness beyond it would hold every day's build back for longer than any
late event is worth waiting for."""


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str | None
    """A real Kafka's bootstrap servers (KAFKA_BOOTSTRAP); None means the embedded broker."""
    topic: str
    """The events topic (LAMBDAFLOW_TOPIC)."""
    data_dir: Path
    """Root of every file lambdaflow writes (LAMBDAFLOW_DATA_DIR), absolute."""
    partitions: int
    """Partitions of the topic when lambdaflow creates it (LAMBDAFLOW_PARTITIONS)."""
    archive_roll_bytes: int
    """The archiver publishes a partition's buffer at this many bytes of messages (LAMBDAFLOW_ARCHIVE_ROLL_MB)."""
    archive_roll_seconds: float
    """... or when it is this old (LAMBDAFLOW_ARCHIVE_ROLL_SECONDS)."""
    allowed_lateness: timedelta
    """How long after an hour ends its events may still arrive (LAMBDAFLOW_ALLOWED_LATENESS_MINUTES)."""
    reconcile_threshold: int = 0
    """The largest unexplained batch-vs-speed difference a reconciled day may show (LAMBDAFLOW_RECONCILE_THRESHOLD)."""
    speed_retention_days: int = 7
    """The speed layer keeps dedupe keys and user-days for this many recent days, built or not
    (LAMBDAFLOW_SPEED_RETENTION_DAYS); of older days it keeps only the aggregates."""
    serve_port: int = 8082
    """The port `lambdaflow serve` listens on unless --port says otherwise (LAMBDAFLOW_SERVE_PORT)."""
    serve_host: str = "127.0.0.1"
    """The address it listens on (LAMBDAFLOW_SERVE_HOST): loopback, except in a container whose
    port is published (docker-compose.yml)."""
    storage: Storage = None  # type: ignore[assignment]  # filled in by __post_init__
    """Where the raw tables live (LAMBDAFLOW_STORAGE_URL, with the AWS variables for S3); left out,
    <data dir>/tables."""

    def __post_init__(self) -> None:
        if self.storage is None:
            object.__setattr__(self, "storage", Storage.from_env({}, self.data_dir))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        bootstrap = environ.get("KAFKA_BOOTSTRAP", "").strip() or None
        if bootstrap is not None and not _BOOTSTRAP.fullmatch(bootstrap):
            raise ConfigError(f"KAFKA_BOOTSTRAP={bootstrap!r} is not a list of host:port, e.g. 127.0.0.1:9092")
        topic = environ.get("LAMBDAFLOW_TOPIC", "").strip() or "events"
        if not _TOPIC_NAME.fullmatch(topic) or topic in {".", ".."}:
            raise ConfigError(
                f"LAMBDAFLOW_TOPIC={topic!r} is not a Kafka topic name (1-249 of the characters A-Z a-z 0-9 . _ -)"
            )
        data_dir = Path(environ.get("LAMBDAFLOW_DATA_DIR", "").strip() or "data")
        return cls(
            kafka_bootstrap=bootstrap,
            topic=topic,
            data_dir=data_dir.expanduser().absolute(),
            partitions=int(_positive(environ, "LAMBDAFLOW_PARTITIONS", default=3, at_most=10_000, whole=True)),
            archive_roll_bytes=int(
                _positive(environ, "LAMBDAFLOW_ARCHIVE_ROLL_MB", default=64, at_most=4096) * 1024 * 1024
            ),
            archive_roll_seconds=_positive(environ, "LAMBDAFLOW_ARCHIVE_ROLL_SECONDS", default=300, at_most=86_400),
            allowed_lateness=timedelta(
                minutes=_minutes(
                    environ, "LAMBDAFLOW_ALLOWED_LATENESS_MINUTES", default=10, at_most=MAX_LATENESS_MINUTES
                )
            ),
            reconcile_threshold=_whole(environ, "LAMBDAFLOW_RECONCILE_THRESHOLD", default=0),
            speed_retention_days=int(
                _positive(environ, "LAMBDAFLOW_SPEED_RETENTION_DAYS", default=7, at_most=366, whole=True)
            ),
            serve_port=int(_positive(environ, "LAMBDAFLOW_SERVE_PORT", default=8082, at_most=65535, whole=True)),
            serve_host=_address(environ, "LAMBDAFLOW_SERVE_HOST", default="127.0.0.1"),
            storage=Storage.from_env(environ, data_dir.expanduser().absolute()),
        )

    @property
    def layout(self) -> Layout:
        """Every path under the data directory."""
        return Layout(self.data_dir)

    @property
    def documents(self) -> Documents:
        """The batch manifest, build records and reconcile reports, wherever the storage keeps them."""
        return Documents(self.data_dir, self.storage)

    @property
    def speed_files(self) -> SpeedFiles:
        """The speed layer's snapshots and progress reports, wherever the storage keeps them."""
        return SpeedFiles(self.data_dir, self.topic, self.storage)

    @property
    def broker_file(self) -> Path:
        """Where the embedded broker announces its address while it runs."""
        return self.layout.broker_announcement


def _positive(environ: Mapping[str, str], name: str, default: float, at_most: float, whole: bool = False) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    value = _number(raw, whole)
    if whole and not (value is not None and 1 <= value <= at_most):
        raise ConfigError(f"{name}={raw!r} must be a whole number from 1 to {at_most:g}")
    if not (value is not None and 0 < value <= at_most):
        raise ConfigError(f"{name}={raw!r} must be a number above 0 and at most {at_most:g}")
    return value


def _address(environ: Mapping[str, str], name: str, default: str) -> str:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return str(ipaddress.IPv4Address(raw))
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an IPv4 address, e.g. 127.0.0.1") from None


def _minutes(environ: Mapping[str, str], name: str, default: float, at_most: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    value = _number(raw, whole=False)
    if not (value is not None and 0 <= value <= at_most):
        raise ConfigError(f"{name}={raw!r} must be a number of minutes from 0 to {at_most:g}")
    return value


def _whole(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not _DIGITS.fullmatch(raw):
        raise ConfigError(f"{name}={raw!r} must be a whole number, 0 or more")
    return int(raw)


def _number(raw: str, whole: bool) -> float | None:
    """A finite number in ASCII digits (not inf, nan, ² or ５), or None."""
    if not raw.isascii():
        return None
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@functools.cache
def settings() -> Settings:
    """The process's settings, parsed from os.environ on first use."""
    return Settings.from_env(os.environ)
