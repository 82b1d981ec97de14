"""A dbt-duckdb plugin that lets dbt read the raw tables' files wherever the storage keeps them.

The batch build gives dbt the URIs that one snapshot of the raw table lists
(``vars.raw_files``). On an S3-compatible storage they are ``s3://`` URIs, and
DuckDB reads them through the storage's fsspec filesystem, registered here on
each connection dbt opens; DuckDB needs no httpfs extension for it. The storage
is the one ``LAMBDAFLOW_STORAGE_URL`` and the AWS variables name, as for every
other reader (:mod:`lambdaflow.core.storage`).
"""

from __future__ import annotations

import os
from pathlib import Path

from dbt.adapters.duckdb.plugins import BasePlugin

from lambdaflow.core.storage import Storage


class Plugin(BasePlugin):
    def configure_connection(self, conn) -> None:
        storage = Storage.from_env(os.environ, Path(os.environ.get("LAMBDAFLOW_DATA_DIR", "data")))
        filesystem = storage.filesystem()
        if filesystem is not None:
            conn.register_filesystem(filesystem)
