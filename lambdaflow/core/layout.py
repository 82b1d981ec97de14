"""Every path under the data directory, in one place.

The layers meet only through these files: the archiver writes the raw store,
the batch build reads it and publishes the batch manifest and its tables, the
stream worker keeps its snapshots, serving reads the published files of both.
README, "The data directory", shows the tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

BATCH_MANIFEST = "batch/manifest.json"
"""The batch manifest's name among the batch documents (:mod:`lambdaflow.core.documents`)."""


def build_record_name(day: date) -> str:
    """Which raw files the day's last build read, and their SHA-256 (a batch document)."""
    return f"batch/builds/{day.isoformat()}.json"


def reconcile_report_name(day: date) -> str:
    """The day's reconciliation (a batch document)."""
    return f"batch/reconcile/{day.isoformat()}.json"


GENERATIONS = ".generations"
"""The folder of the speed layer's state generations; ``speed/<topic>`` links to the live one."""


@dataclass(frozen=True)
class Layout:
    root: Path
    """The data directory (LAMBDAFLOW_DATA_DIR)."""

    # The broker

    @property
    def broker_announcement(self) -> Path:
        """Where the embedded broker announces its address while it runs."""
        return self.root / "broker" / "broker.json"

    @property
    def broker_log(self) -> Path:
        return self.root / "broker" / "tansu.log"

    # The archiver (its tables live on the storage: lambdaflow.core.storage, by default under tables/)

    def archiver_state(self, topic: str) -> Path:
        """The archiver's status reports, one per partition."""
        return self.root / "archiver" / topic

    # The batch layer (written by the build)

    @property
    def batch_manifest(self) -> Path:
        """The built days, what each build read, and the serving boundary."""
        return self.root / BATCH_MANIFEST

    def empty_raw_file(self, day: date) -> Path:
        """The one empty file a build of a day without raw files reads."""
        return self.root / "batch" / "empty" / f"event_date={day.isoformat()}" / "empty.parquet"

    def build_record(self, day: date) -> Path:
        """Which raw files the day's last build read, and their SHA-256 (on a local storage)."""
        return self.root / build_record_name(day)

    def reconcile_report(self, day: date) -> Path:
        return self.root / reconcile_report_name(day)

    @property
    def warehouse(self) -> Path:
        """dbt's DuckDB file and the lock its writers hold."""
        return self.root / "warehouse"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    # The speed layer (written by the stream worker)

    def speed_state(self, topic: str) -> Path:
        """The live state of a topic: a link into :attr:`speed_generations`."""
        return self.root / "speed" / topic

    def speed_snapshots(self, topic: str) -> Path:
        return self.speed_state(topic) / "snapshots"

    @property
    def speed_generations(self) -> Path:
        return self.root / "speed" / GENERATIONS

    # The shells

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        """The `make up` stack's record of what it started."""
        return self.root / "run"

    @property
    def docs_target(self) -> Path:
        return self.root / "docs" / "target"

    def temp(self, writer: str) -> Path:
        """A writer's scratch folder: files are written there, then renamed into place."""
        return self.root / "tmp" / writer
