"""The batch layer's small JSON documents: its manifest, build records and reconcile reports.

On a local storage they are files under the data directory (``batch/...``), each
replaced by a rename; on an S3 storage they live beside the tables
(``<storage>/batch/...``), each replaced by one PUT, so a build, a stream worker
and a server on three hosts read the same ones. Either way a reader gets the
old document or the new one, whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambdaflow.core.files import read_json, replace_json
from lambdaflow.core.storage import Storage


class Changed(Exception):
    """A conditional write found the document replaced since it was read."""


@dataclass(frozen=True)
class Documents:
    data_dir: Path
    storage: Storage

    @classmethod
    def from_env(cls, data_dir: Path) -> Documents:
        """The documents of a process given only its data directory (the storage from the environment)."""
        return cls(data_dir, Storage.from_env(os.environ, data_dir))

    def where(self, name: str) -> str:
        """Where the document ``name`` (a relative path such as ``batch/manifest.json``) lives."""
        return self.storage.table_uri(name) if self.storage.is_s3 else str(self.data_dir / name)

    def read(self, name: str, remedy: str | None = None) -> Any | None:
        """The document; None when there is none, :class:`DamagedFile` when it is not JSON."""
        if self.storage.is_s3:
            return self.storage.read_json(self.where(name), remedy)
        return read_json(self.data_dir / name, remedy)

    def write(self, name: str, document: Any) -> None:
        """Replace the document, durably."""
        if self.storage.is_s3:
            self.storage.write_json(self.where(name), document)
        else:
            replace_json(self.data_dir / name, document)

    def read_for_update(self, name: str, remedy: str | None = None) -> tuple[Any | None, str | None]:
        """The document and what :meth:`write_if_unchanged` checks it against (on S3 its ETag, read
        first: a document replaced in between only makes that write refuse)."""
        if not self.storage.is_s3:
            return self.read(name, remedy), None
        try:
            etag = self.storage.filesystem().info(self.where(name), refresh=True).get("ETag")
        except FileNotFoundError:
            etag = None
        return self.read(name, remedy), etag

    def write_if_unchanged(self, name: str, document: Any, etag: str | None) -> None:
        """Replace the document only if it is still the one :meth:`read_for_update` read (on S3, by a
        conditional PUT: ``If-Match``, or ``If-None-Match`` where there was none); raises
        :class:`Changed` otherwise. On a local storage the writers hold the warehouse lock."""
        if not self.storage.is_s3:
            self.write(name, document)
            return
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self.storage.write_json(self.where(name), document, **condition)
        except OSError as error:  # s3fs: FileExistsError or EINVAL for 412 Precondition Failed
            if "pre-condition" in str(error).lower() or isinstance(error, FileExistsError):
                raise Changed(f"{self.where(name)} was replaced by another writer meanwhile") from None
            raise

    def version(self, name: str) -> tuple | None:
        """The document's identity now, which changes with each replacement (None: there is none)."""
        try:
            if self.storage.is_s3:
                info = self.storage.filesystem().info(self.where(name), refresh=True)
                return (info.get("ETag"), info.get("LastModified"), info.get("size"))
            found = (self.data_dir / name).stat()
        except FileNotFoundError:
            return None
        return found.st_ino, found.st_size, found.st_mtime_ns
