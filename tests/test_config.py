from pathlib import Path

import pytest

from lambdaflow.core.config import Settings
from lambdaflow.core.errors import ConfigError


def test_defaults_run_on_one_machine_with_no_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.kafka_bootstrap is None
    assert settings.topic == "events"
    assert settings.data_dir == tmp_path / "data"
    assert settings.partitions == 3


def test_environment_overrides_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP": "127.0.0.1:9092,127.0.0.1:9093",
            "LAMBDAFLOW_TOPIC": "clicks.v2",
            "LAMBDAFLOW_DATA_DIR": str(tmp_path / "lake"),
            "LAMBDAFLOW_PARTITIONS": "6",
            "LAMBDAFLOW_RECONCILE_THRESHOLD": "3",
            "LAMBDAFLOW_SPEED_RETENTION_DAYS": "2",
        }
    )
    assert settings.kafka_bootstrap == "127.0.0.1:9092,127.0.0.1:9093"
    assert settings.topic == "clicks.v2"
    assert settings.data_dir == tmp_path / "lake"
    assert settings.partitions == 6
    assert settings.reconcile_threshold == 3
    assert settings.speed_retention_days == 2


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.topic = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "environ",
    [
        {"LAMBDAFLOW_TOPIC": "../etc"},
        {"LAMBDAFLOW_TOPIC": "x" * 250},
        {"KAFKA_BOOTSTRAP": "127.0.0.1"},
        {"LAMBDAFLOW_PARTITIONS": "three"},
        {"LAMBDAFLOW_PARTITIONS": "-1"},
        {"LAMBDAFLOW_RECONCILE_THRESHOLD": "-1"},
        {"LAMBDAFLOW_RECONCILE_THRESHOLD": "0.5"},
        {"LAMBDAFLOW_RECONCILE_THRESHOLD": "²"},
        {"LAMBDAFLOW_PARTITIONS": "３"},
        {"LAMBDAFLOW_ARCHIVE_ROLL_MB": "inf"},
        {"LAMBDAFLOW_ARCHIVE_ROLL_MB": "1e400"},
        {"LAMBDAFLOW_ARCHIVE_ROLL_SECONDS": "nan"},
        {"LAMBDAFLOW_ALLOWED_LATENESS_MINUTES": "nan"},
        {"LAMBDAFLOW_ALLOWED_LATENESS_MINUTES": "1e12"},
        {"LAMBDAFLOW_ALLOWED_LATENESS_MINUTES": "-0.5"},
        {"LAMBDAFLOW_SPEED_RETENTION_DAYS": "0"},
        {"LAMBDAFLOW_SPEED_RETENTION_DAYS": "1.5"},
        {"LAMBDAFLOW_SPEED_RETENTION_DAYS": "367"},
    ],
)
def test_unusable_values_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(environ)
