"""A running `lambdaflow serve`, started by a test and stopped by its PID, and plain HTTP to it."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lambdaflow.ops.processes import Child, tail

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never through a proxy


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str

    def json(self):
        return json.loads(self.body)


@dataclass
class Served:
    child: Child
    url: str

    def get(self, path: str, timeout: float = 30) -> Reply:
        try:
            with _DIRECT.open(self.url + path, timeout=timeout) as response:
                return Reply(response.status, response.read(), response.headers.get("content-type", ""))
        except urllib.error.HTTPError as error:
            return Reply(error.code, error.read(), error.headers.get("content-type", ""))

    def stop(self) -> None:
        self.child.stop()


def start_serve(env: dict[str, str], scratch: Path, name: str = "serve") -> Served:
    """`lambdaflow serve --port 0`; returns once it printed the URL it answers on."""
    child = Child(name, [sys.executable, "-m", "lambdaflow", "serve", "--port", "0"], env, scratch / f"{name}.log")
    child.start()
    try:
        line = child.read_line(timeout=120)
    except (RuntimeError, TimeoutError):
        child.stop()
        raise RuntimeError(f"`lambdaflow serve` did not start:\n{tail(child.log_path)}") from None
    prefix = "serving: "
    assert line.startswith(prefix), line
    return Served(child, line.removeprefix(prefix))
