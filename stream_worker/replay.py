"""`lambdaflow stream --replay`: rebuild the speed layer's state from the start of the log.

The replay counts the whole topic into a fresh generation of the state
(``speed/.generations/<topic>-<id>/``) with a consumer group of its own, so the
live state and its snapshots keep serving meanwhile. When it has caught up,
``speed/<topic>`` (a symbolic link to the current generation) is swapped to
the new one in one rename: a reader sees the old snapshots or the new ones,
never a mix and never none. The old generation is then removed; queries that
already opened its files finish on them.

No stream worker may run on the topic during a replay (the old generation's
state files would keep changing): the replay refuses to start while one holds
a state file.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

import duckdb

from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.layout import Layout
from stream_worker.paths import SpeedPaths
from stream_worker.worker import StreamWorker, Totals

log = logging.getLogger(__name__)


def replay(bootstrap: str, data_dir: Path, topic: str, stop: threading.Event) -> Totals:
    """Count the topic from offset 0 into a new generation, then make it the live one."""
    live = SpeedPaths(data_dir, topic)
    _refuse_while_a_worker_runs(live)
    generation_id = uuid.uuid4().hex[:12]
    generation = Layout(data_dir).speed_generations / f"{topic}-{generation_id}"
    generation.mkdir(parents=True)
    log.info("replaying %s from the start of the log into %s", topic, generation)
    worker = StreamWorker(
        bootstrap,
        data_dir,
        topic,
        group_id=f"speed-replay-{generation_id}",
        paths=SpeedPaths(data_dir, topic, root=generation),
    )
    try:
        totals = worker.run(stop, until_idle=True)
        if stop.is_set():
            raise LambdaflowError("replay stopped before it caught up; the live speed state is unchanged")
    except BaseException:
        shutil.rmtree(generation, ignore_errors=True)
        raise
    _switch(live.root, generation)
    if live.files.on_store:
        live.files.switch_to(generation.name)
    log.info("%s: the speed layer now serves the replayed state (%d messages)", topic, totals.messages)
    return totals


def _refuse_while_a_worker_runs(live: SpeedPaths) -> None:
    for state_file in sorted(live.root.glob("partition-*.duckdb")):
        try:
            duckdb.connect(str(state_file), read_only=True).close()
        except duckdb.IOException as error:
            if "lock" in str(error).lower():
                raise LambdaflowError(
                    f"a stream worker holds {state_file}: stop the stream workers of this topic, then replay"
                ) from None
        except duckdb.Error:
            pass  # a damaged file: exactly what a replay replaces


def _switch(link: Path, generation: Path) -> None:
    """Point ``link`` at ``generation`` in one rename and remove what it pointed at before."""
    target = os.path.relpath(generation, link.parent)
    previous: Path | None = None
    if link.is_symlink():
        previous = link.resolve()
    elif link.exists():  # state from before generations: move it aside (readers see no snapshot briefly)
        previous = generation.parent / f"{link.name}-{uuid.uuid4().hex[:12]}-before"
        os.rename(link, previous)
    staged = link.with_name(f".{link.name}.{uuid.uuid4().hex[:12]}.link")
    staged.symlink_to(target, target_is_directory=True)
    os.replace(staged, link)
    if previous is not None and previous != generation:
        shutil.rmtree(previous, ignore_errors=True)
