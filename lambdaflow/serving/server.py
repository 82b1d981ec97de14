"""Runs :mod:`lambdaflow.serving.api` under uvicorn on 127.0.0.1 until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable

import uvicorn

from lambdaflow.core.config import Settings
from lambdaflow.core.days import today
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.serving.api import create_app
from lambdaflow.serving.query import Question, answer

log = logging.getLogger(__name__)


def _bound(host: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise LambdaflowError(f"cannot listen on {host}:{port}: {error.strerror}; pick another with --port") from None
    listener.listen(128)
    return listener


def _warm(settings: Settings) -> None:
    """The first answer renders and parses the serving SQL: pay it before saying we serve."""
    try:
        answer(settings, Question(today(), today()))
    except LambdaflowError as error:  # nothing published yet, or a damaged file: /healthz will say so
        log.warning("serving: the first answer failed: %s", error)


def serve(settings: Settings, port: int, announce: Callable[[str], None]) -> None:
    listener = _bound(settings.serve_host, port)
    url = f"http://{settings.serve_host}:{listener.getsockname()[1]}"
    _warm(settings)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), log_level="warning", access_log=False, lifespan="off", workers=1)
    )

    def say_when_started() -> None:
        while not server.started and not server.should_exit:
            threading.Event().wait(0.02)
        if server.started:
            announce(url)
            sys.stdout.flush()

    threading.Thread(target=say_when_started, name="announce", daemon=True).start()
    log.info("serving %s from %s", url, settings.data_dir)
    server.run(sockets=[listener])
