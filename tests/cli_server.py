"""One long-lived `lambdaflow` process that runs command after command, as `lambdaflow` runs one.

A `lambdaflow batch` process spends most of its time importing Airflow and dbt before the DAG
run starts. A test world that builds many times starts this process once (its environment is
the world's, fixed for its life, as Airflow reads its configuration on import) and sends it each
command line: it runs `lambdaflow.cli.main` with that argv, its file descriptors 1 and 2
pointed at the files the request names, and replies with the exit code. Output, exit code and
the DAG run are those of the real command; only the imports are paid once.

Protocol: one JSON object per line on stdin, ``{"args": [...], "stdout": path, "stderr": path}``;
one per line on the process's original stdout, ``{"exit_code": n}``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def run(args: list[str], stdout_path: str, stderr_path: str) -> int:
    from lambdaflow.cli import main

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.argv = ["lambdaflow", *args]
        try:
            main()
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        except BaseException:  # what an uncaught exception does to a real process
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
    return code


def serve() -> None:
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # nothing but replies reaches the original stdout
    for line in sys.stdin:
        request = json.loads(line)
        code = run(request["args"], request["stdout"], request["stderr"])
        reply.write(json.dumps({"exit_code": code}) + "\n")


if __name__ == "__main__":
    serve()
