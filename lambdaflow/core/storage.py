"""Where lambdaflow's tables live: a local directory, or any S3-compatible object store.

``LAMBDAFLOW_STORAGE_URL`` names the root: a path (the default, ``<data dir>/tables``)
or ``s3://bucket/prefix``. For S3 the usual AWS variables apply
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``) and
``AWS_ENDPOINT_URL`` points at a store other than AWS (MinIO, moto). The tables
are Delta tables (docs/storage.md says why): delta-rs writes them through the
store's own conditional writes, so no lock service and no shared disk is
involved, and DuckDB reads their files through an fsspec filesystem.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from lambdaflow.core.errors import ConfigError, first_line
from lambdaflow.core.files import DamagedFile

AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class Storage:
    """The root of the tables, and what it takes to reach it."""

    url: str
    """An absolute local path, or ``s3://bucket/prefix`` (no trailing slash)."""
    aws: Mapping[str, str] = field(default_factory=dict)
    """The AWS variables given, for an S3 root."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str], data_dir: Path) -> Storage:
        raw = environ.get("LAMBDAFLOW_STORAGE_URL", "").strip()
        if not raw:
            return cls(str((data_dir / "tables").resolve()))
        parsed = urlparse(raw)
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise ConfigError(f"LAMBDAFLOW_STORAGE_URL={raw!r} names no bucket: use s3://bucket/prefix")
            aws = {name: environ[name] for name in AWS_VARIABLES if environ.get(name)}
            if "AWS_REGION" not in aws and environ.get("AWS_DEFAULT_REGION"):
                aws["AWS_REGION"] = environ["AWS_DEFAULT_REGION"]
            return cls(f"s3://{parsed.netloc}{parsed.path.rstrip('/')}", aws)
        if parsed.scheme in ("", "file"):
            path = Path(parsed.path if parsed.scheme == "file" else raw).expanduser()
            return cls(str(path.resolve()))
        raise ConfigError(
            f"LAMBDAFLOW_STORAGE_URL={raw!r}: lambdaflow keeps its tables in a local directory "
            "or on an S3-compatible store (s3://bucket/prefix)"
        )

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    def table_uri(self, *parts: str) -> str:
        """The URI of the table at ``parts`` below the root."""
        return "/".join([self.url, *parts])

    def open(self, uri: str) -> BinaryIO:
        """One of the storage's files (a URI that a table lists), opened for reading. An object is
        fetched whole, by one GET: one replaced meanwhile (a speed snapshot) is read as one version."""
        if self.is_s3:
            return io.BytesIO(self.filesystem().cat_file(uri))
        return open(uri, "rb")  # noqa: SIM115 - the caller closes it

    def read_json(self, uri: str, remedy: str | None = None) -> Any | None:
        """A small JSON object on an S3 storage; None when there is none, :class:`DamagedFile` when it
        is not JSON (``remedy`` says what to do about it)."""
        try:
            return json.loads(self.filesystem().cat_file(uri))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:  # unreachable, or not JSON, or not UTF-8
            raise DamagedFile(uri, first_line(error), remedy) from None

    def write_json(self, uri: str, document: Any, **condition: str) -> None:
        """Put a small JSON object on an S3 storage: one PUT, so a reader gets the old object or the
        new one, whole (``condition``: ``IfMatch`` or ``IfNoneMatch``, for a conditional PUT)."""
        self.filesystem().pipe_file(
            uri, json.dumps(document, indent=1, sort_keys=True, default=str).encode(), **condition
        )

    def list_names(self, folder_uri: str) -> list[str]:
        """The names of the objects directly under ``folder_uri`` on an S3 storage, as listed now."""
        try:
            return [file_name(entry) for entry in self.filesystem().ls(folder_uri, detail=False, refresh=True)]
        except FileNotFoundError:
            return []

    def delta_options(self) -> dict[str, str] | None:
        """deltalake's ``storage_options``: None for a local root."""
        if not self.is_s3:
            return None
        options = {name: value for name, value in self.aws.items()}
        options.setdefault("AWS_REGION", "us-east-1")
        endpoint = self.aws.get("AWS_ENDPOINT_URL", "")
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
        options["conditional_put"] = "etag"  # commits by If-None-Match, not by a lock service
        return options

    def duckdb(self) -> Any:
        """A new in-memory DuckDB connection that reads this storage's files (``s3://`` ones too)."""
        import duckdb

        con = duckdb.connect()
        filesystem = self.filesystem()
        if filesystem is not None:
            con.register_filesystem(filesystem)
        return con

    def filesystem(self) -> Any:
        """An fsspec filesystem for DuckDB's ``register_filesystem`` (None for a local root): DuckDB
        reads ``s3://`` files through it, with no httpfs extension."""
        if not self.is_s3:
            return None
        import s3fs

        return s3fs.S3FileSystem(
            key=self.aws.get("AWS_ACCESS_KEY_ID"),
            secret=self.aws.get("AWS_SECRET_ACCESS_KEY"),
            token=self.aws.get("AWS_SESSION_TOKEN"),
            client_kwargs={
                "endpoint_url": self.aws.get("AWS_ENDPOINT_URL"),
                "region_name": self.aws.get("AWS_REGION", "us-east-1"),
            },
        )


def file_name(uri: str) -> str:
    """The last part of a file's URI or path: a table's file names are unique within it."""
    return uri.rsplit("/", 1)[-1]
