"""A local S3-compatible server (moto's), on 127.0.0.1, started and stopped by its own PID.

It enforces the conditional writes (``If-None-Match``, ``If-Match``) the Delta
tables commit with, so the tests and the benchmark run the object-storage path
exactly as it runs against MinIO or AWS, with no container and no network.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lambdaflow.core.errors import LambdaflowError
from lambdaflow.kafka.broker import HOST, free_port, port_answers
from lambdaflow.ops.processes import Child

ACCESS_KEY = "lambdaflow"
SECRET_KEY = "lambdaflow-secret"
REGION = "us-east-1"


class LocalS3Server:
    """``python -m moto.server`` in a child process; :meth:`bucket` creates a bucket on it."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.child = Child(
            "s3 server", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)], None, log_path
        )

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 30.0) -> LocalS3Server:
        self.child.start()
        deadline = time.monotonic() + timeout
        while not port_answers(HOST, self.port):
            if not self.child.running():
                raise LambdaflowError(f"the S3 server exited on start; see {self.child.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise LambdaflowError(f"the S3 server did not open port {self.port} in {timeout:.0f} s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.child.stop(grace=10.0)

    def env(self) -> dict[str, str]:
        """The AWS variables that reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def bucket(self, name: str) -> str:
        """Create the bucket ``name``; returns ``s3://name``."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        client.create_bucket(Bucket=name)
        return f"s3://{name}"
