"""The metrics, defined once: ``vars.metrics`` in ``dbt_project/dbt_project.yml``.

The dbt models read that list with ``var('metrics')``; this module reads the
same list for the speed layer (Polars expressions, its state's columns) and
for the serving answers. Every metric is additive per UTC hour and country
over distinct valid events:

- ``count``: the events of ``event_types`` (every type when none are listed);
- ``sum``: ``field`` over the events of ``event_types``;
- ``users``: the users whose first event of the UTC day among ``event_types``
  falls in the hour, "first" ordered by occurred_at, then offset.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from lambdaflow.core.errors import ConfigError
from lambdaflow.core.event_types import EVENT_TYPES
from lambdaflow.core.project import DBT_PROJECT_FILE

if TYPE_CHECKING:  # the expressions are the speed layer's; a serving answer reads only the names
    import polars as pl

AGGREGATIONS = ("count", "sum", "users")
SUMMABLE_FIELDS = ("amount_cents",)
_KEY_COLUMNS = {"event_date", "hour", "event_hour", "country", "source", "kafka_partition", "next_offset", "epoch"}
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class Metric:
    name: str
    aggregation: str
    description: str
    event_types: tuple[str, ...] = ()
    field: str | None = None

    @property
    def money(self) -> bool:
        """An amount in cents (its name ends in ``_cents``): people read it as money, two decimals."""
        return self.name.endswith("_cents")

    @property
    def counts_users(self) -> bool:
        return self.aggregation == "users"

    def selects(self) -> pl.Expr:
        """True for the events this metric looks at."""
        import polars as pl

        if self.event_types:
            return pl.col("event_type").is_in(list(self.event_types))
        return pl.col("event_type").is_not_null()  # every valid event (a literal would not broadcast in a group)

    def hourly_expression(self) -> pl.Expr:
        """The metric over one group of distinct events (count and sum metrics only)."""
        import polars as pl

        if self.aggregation == "count":
            return self.selects().sum().cast(pl.Int64).alias(self.name)
        if self.aggregation == "sum" and self.field is not None:  # load() refuses a sum without one
            value = pl.when(self.selects()).then(pl.col(self.field)).otherwise(0)
            return value.sum().cast(pl.Int64).alias(self.name)
        raise ValueError(f"{self.name} counts users: see aggregate.first_seen")


def parse(entries: object, source: str) -> tuple[Metric, ...]:
    """Validated metrics from the YAML list; every mistake is one clear line."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: vars.metrics must be a non-empty list")
    metrics, names = [], set()
    for index, entry in enumerate(entries):
        where = f"{source}: metric {index + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} is not a mapping")
        unknown = set(entry) - {"name", "aggregation", "description", "event_types", "field"}
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}")
        for required in ("name", "aggregation", "description"):
            if entry.get(required) is None:
                raise ConfigError(f"{where}{_named(entry)} has no {required}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _KEY_COLUMNS:
            raise ConfigError(
                f"{where}: name {name!r} is not a plain SQL identifier (a lower-case letter, then "
                "lower-case letters, digits or _, 63 at most) or is a key column such as country"
            )
        if name in _reserved_words():
            raise ConfigError(f"{where}: name {name!r} is a reserved word of SQL; choose another")
        if name in names:
            raise ConfigError(f"{where}: {name} is defined twice")
        names.add(name)
        aggregation = entry.get("aggregation")
        if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
            raise ConfigError(f"{where} ({name}): aggregation {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
        event_types = entry.get("event_types") or []
        if not isinstance(event_types, list) or not all(isinstance(t, str) and t in EVENT_TYPES for t in event_types):
            raise ConfigError(
                f"{where} ({name}): event_types {event_types!r} must be a list of {', '.join(EVENT_TYPES)}"
            )
        field = entry.get("field")
        if aggregation == "sum" and field is None:
            raise ConfigError(f"{where} ({name}) has no field: a sum needs one of {', '.join(SUMMABLE_FIELDS)}")
        if aggregation != "sum" and field is not None:
            raise ConfigError(f"{where} ({name}): only a sum takes a field, not {aggregation}")
        if field is not None and (not isinstance(field, str) or field not in SUMMABLE_FIELDS):
            raise ConfigError(f"{where} ({name}): field {field!r} is not one of {', '.join(SUMMABLE_FIELDS)}")
        description = entry.get("description")
        if not isinstance(description, str) or not description.strip():
            raise ConfigError(f"{where} ({name}) needs a description")
        metrics.append(Metric(name, aggregation, description.strip(), tuple(event_types), field))
    return tuple(metrics)


@functools.cache
def _reserved_words() -> frozenset[str]:
    """SQL's reserved words, as DuckDB (which runs every query here) has them: a metric's name is a
    bare column name in the models and the speed state, where `order` or `from` would not parse."""
    import duckdb

    with duckdb.connect() as con:
        rows = con.execute("select keyword_name from duckdb_keywords() where keyword_category = 'reserved'")
        return frozenset(word for (word,) in rows.fetchall())


def _named(entry: dict) -> str:
    name = entry.get("name")
    return f" ({name})" if isinstance(name, str) else ""


def load(path: Path = DBT_PROJECT_FILE) -> tuple[Metric, ...]:
    try:
        project = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read the metrics from {path}: {' '.join(str(error).split())}") from None
    variables = project.get("vars") if isinstance(project, dict) else None
    return parse(variables.get("metrics") if isinstance(variables, dict) else None, str(path))


@functools.cache
def defined() -> tuple[Metric, ...]:
    """The project's metrics, read once per process."""
    return load()


def names(metrics: tuple[Metric, ...] | None = None) -> tuple[str, ...]:
    return tuple(m.name for m in (metrics or defined()))
