"""``python -m lambdaflow.ops.stack up|down|docs|airflow``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.output import FORMATS, configure_logging, emit, emit_record
from lambdaflow.ops.stack.config import StackConfig
from lambdaflow.ops.stack.down import down
from lambdaflow.ops.stack.services import run_airflow, serve_docs
from lambdaflow.ops.stack.up import up


def _emit_down(result: dict[str, Any], fmt: str) -> None:
    """JSON: one object; a table: a row per service stopped (none when nothing was up)."""
    if fmt == "json":
        emit_record(result, fmt)
    elif result["stopped"]:
        emit(result["stopped"], fmt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lambdaflow.ops.stack",
        description="The lambdaflow stack on 127.0.0.1: `up` starts it and returns, `down` stops it.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start every service and wait until each is ready"),
        ("down", "stop the services `up` recorded"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument(
            "--format", dest="fmt", choices=FORMATS, default="json", help="JSON (default), or a table for people"
        )
    docs = commands.add_parser("docs", help="generate and serve the dbt docs (a service of `up`)")
    docs.add_argument("--port", type=int, help="overrides LAMBDAFLOW_DOCS_PORT")
    commands.add_parser("airflow", help="run Airflow's components together (a service of `up`)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        config = StackConfig.from_env(os.environ)
        if args.command == "docs":
            if args.port:
                config = StackConfig(config.settings, config.airflow_port, args.port, config.live_rate)
            serve_docs(config)
            return 0
        if args.command == "airflow":
            return run_airflow(config)
        if args.command == "up":
            emit_record(up(config), args.fmt)
        else:
            _emit_down(down(config), args.fmt)
    except LambdaflowError as error:
        print(f"stack {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stack {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


sys.exit(main())
