"""`make chaos`: a seeded, randomized fault scenario that proves nothing is lost or counted twice.

A producer sends a few days of history and today so far (with duplicates,
disorder, late and malformed messages) at a steady rate, while the runner, on a
schedule drawn from the seed:

- kills the archiver and the stream worker with SIGKILL and starts them again;
- lets a second archiver and a second stream worker join and leave (rebalances);
- pauses the broker (SIGSTOP for a few seconds, then SIGCONT);
- runs batch builds, a rebuild, a backfill of every closed day and the manual
  batch for today, each in a process of its own, while events flow; the first
  is a batch for today with no day behind it built yet (days built out of
  order), one runs while every stream worker is stopped (a lagging speed layer
  across a manual batch), and once two `lambdaflow batch --today` start at once
  (concurrent triggers: each must build, or refuse with one line);
- sends a share of the events from producers whose clocks are 3 hours ahead or
  behind (occurred_at and Kafka timestamp both skewed).

Then the producer finishes, the workers catch up, and the runner does what an
operator would: it builds each closed day not built yet, rebuilds the days with
late raw files (`lambdaflow batch --late`) and builds today. Then it checks,
with code independent of the pipeline's (tests/contract_oracle.py and
tests/ground_truth.py):

- the raw store holds every valid offset of the log once, and the dead letter
  exactly the malformed ones;
- `lambdaflow query` serves, per day and per hour (and per country), exactly
  the metrics computed from the log;
- at every moment it looked (after each build, around the stalled speed layer,
  at the end), each hour was served by the layer the manifest assigns it, never
  by both and never by neither (`served_once`).

The last line is ``chaos: N kills, M events, L lost, D duplicated, H hours served
twice or never``; the exit code is 1 unless L, D and H are 0 and every check
passed. The seed is printed
first: ``make chaos SEED=<seed>`` replays the same schedule and the same events.

    python -m chaos [--seed S] [--duration SECONDS] [--kills K] [--events-per-day E]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from lambdaflow.kafka import clients
from lambdaflow.kafka.broker import EmbeddedBroker
from lambdaflow.ops.processes import Child
from lambdaflow.synthetic import generator
from lambdaflow.synthetic.producer import RateLimiter
from tests.contract_oracle import expected_reason
from tests.ground_truth import METRICS, hourly_metrics
from tests.kafka_helpers import read_all
from tests.worker_helpers import WorkerProcess, archived_rows, assert_nothing_half_written

log = logging.getLogger("chaos")

TOPIC = "events"
PARTITIONS = 3
HISTORY_DAYS = 3
PRODUCING_SHARE = 0.7  # of the scenario's duration, the rest lets faults hit a quiet log
SKEWED_SHARE = 0.02  # of the events, sent from a producer whose clock is 3 hours off


@dataclass(frozen=True)
class Scenario:
    seed: int
    duration: float
    kills: int  # of the archiver, and as many of the stream worker
    events_per_day: int

    def actions(self, rng: random.Random) -> list[str]:
        """The faults and jobs, in a random order; joins and leaves come in pairs."""
        rounds = max(1, self.kills // 5)
        actions = (
            ["kill archiver"] * self.kills
            + ["kill stream worker"] * self.kills
            + ["second archiver"] * 2 * rounds
            + ["second stream worker"] * 2 * rounds
            + ["pause broker"] * rounds
            + ["build a day"] * rounds
            + ["rebuild a day", "backfill", "batch for today"]
            + ["batch for today, the speed layer stopped", "two batches for today at once"]
        )
        rng.shuffle(actions)
        return ["batch for today, no day built"] + actions


@dataclass
class Tally:
    kills: int = 0
    pauses: int = 0
    builds: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    moments: int = 0  # times the served hours were checked
    misserved: set = field(default_factory=set)  # (day, hour) served twice or never at some moment


class Workers:
    """The archivers and stream workers, each a `lambdaflow` process stopped by its own PID."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.started: Counter[str] = Counter()
        self.running: dict[str, list[WorkerProcess]] = {"archive": [], "stream": []}

    def start(self, command: str) -> WorkerProcess:
        self.started[command] += 1
        worker = WorkerProcess(command, self.env, self.logs / f"{command}-{self.started[command]}.log")
        self.running[command].append(worker)
        log.info("started %s %d (pid %d)", command, self.started[command], worker.pid)
        return worker

    def kill_9(self, command: str, which: int = 0) -> None:
        self.running[command].pop(which).kill_9()

    def stop(self, command: str, tally: Tally) -> None:
        """SIGTERM to the newest: it must exit 0 with its summary, whatever happened before. It gets the
        signal once it has started (logged its first line): before that, Python's default handler ends
        it, which loses nothing but has no summary to check."""
        worker = self.running[command].pop()
        deadline = time.monotonic() + 120
        while worker.running() and not worker.log_path.stat().st_size and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            worker.terminate(timeout=120)
        except (AssertionError, TimeoutError, ValueError) as error:
            worker.ensure_stopped()
            tally.failures.append(
                f"{command} (pid {worker.pid}) did not stop cleanly (exit code "
                f"{worker.returncode}; see {worker.log_path}): {str(error)[-500:]}"
            )

    def stop_all(self, tally: Tally) -> None:
        for command, workers in self.running.items():
            while workers:
                self.stop(command, tally)

    def ensure_stopped(self) -> None:
        for workers in self.running.values():
            for worker in workers:
                worker.ensure_stopped()


class Builds:
    """Batch builds, one at a time, in one child process that runs the DAGs as `lambdaflow batch` does;
    it stays up between requests, so Airflow and dbt are imported once."""

    def __init__(self, env: dict[str, str], logs: Path, tally: Tally) -> None:
        self.env = env
        self.logs = logs
        self.tally = tally
        self.child: Child | None = None
        self.pending = 0
        self.built: set[str] = set()

    def request(self, days: list[str]) -> None:
        if self.child is None:
            command = [sys.executable, "-m", "chaos", "build-server"]
            self.child = Child("build-server", command, self.env, self.logs / "builds.log", requests=True).start()
        self.child.send_line(" ".join(days))
        self.pending += len(days)

    def poll(self, timeout: float | None = None) -> None:
        """Take in the results that have arrived (waiting up to ``timeout`` for one)."""
        wait = timeout or 0.0
        while self.child is not None:
            try:
                line = self.child.read_line(wait)
            except TimeoutError:
                return
            except RuntimeError:  # the process ended
                if self.pending:
                    self.tally.failures.append(
                        f"the build process exited with {self.pending} builds to go; see {self.logs / 'builds.log'}"
                    )
                    self.pending = 0
                return
            self._collect(json.loads(line))
            wait = 0.0

    def wait(self) -> None:
        while self.pending:
            self.poll(timeout=1.0)

    def close(self) -> None:
        """End the requests: it exits by itself, or is stopped by its PID after a minute."""
        if self.child is not None and self.child.running():
            self.child.end_requests()
            try:
                self.child.wait(60)
            except TimeoutError:
                pass  # wait() has stopped it

    def _collect(self, result: dict) -> None:
        self.pending -= 1
        self.tally.builds[result["result"]] += 1
        if result["result"] == "built":
            self.built.add(result["day"])
        detail = result.get("error") or (f"rebuilt {result['rebuilt']}" if "rebuilt" in result else "")
        log.info("build %s: %s", result["day"], result["result"] + (f" ({detail})" if detail else ""))
        if result["result"] == "failed":
            self.tally.failures.append(f"the build of {result['day']} failed: {result['error']}")
        served_once(self.tally, f"after the build of {result['day']}")


def served_once(tally: Tally, moment: str) -> None:
    """One reading of what is served now: every (day, hour) must come from exactly the layer the
    manifest assigns it (the batch for a built day's hours before both the boundary and its
    built_until, the speed layer for every other hour), never from both, never from neither."""
    from lambdaflow.core.boundary import BatchHours, read_manifest
    from lambdaflow.core.config import settings
    from lambdaflow.serving.query import ServingInputs, hourly_rows

    config = settings()
    manifest = read_manifest(config.documents)
    batch = BatchHours.of(manifest)
    inputs = ServingInputs.current(config)
    if inputs.served_until != batch.served_until:  # the manifest changed in between: look again later
        return
    rows = hourly_rows(inputs)
    tally.moments += 1
    sources: dict[tuple, set] = {}
    for day, hour, source in rows.select("event_date", "hour", "source").unique().iter_rows():
        sources.setdefault((day, hour), set()).add(source)
    for (day, hour), found in sorted(sources.items()):
        start = datetime(day.year, day.month, day.day, hour)
        owner = "batch" if batch.serves(start) else "realtime"
        if found != {owner}:
            tally.misserved.add((day.isoformat(), hour))
            tally.failures.append(f"{moment}: {day} {hour}:00 served by {sorted(found)}, owned by {owner}")
    for day, until in batch.served_until.items():
        built_until = datetime.fromisoformat(manifest["days"][day.isoformat()]["built_until"])
        if until > built_until.astimezone(UTC).replace(tzinfo=None):
            tally.misserved.add((day.isoformat(), None))
            tally.failures.append(f"{moment}: {day} is served from the batch until {until}, built until {built_until}")


def build_server() -> int:
    """The `build-server` subcommand: for each line of days on stdin, run the batch DAG for each day
    ("today": the manual batch, "late": the late DAG), one JSON result per line on stdout."""
    results = os.fdopen(os.dup(1), "w")  # the results alone; whatever Airflow and dbt print goes to stderr
    os.dup2(2, 1)
    from lambdaflow.batch.completeness import DayNotComplete
    from lambdaflow.batch.runner import run_batch, run_late
    from lambdaflow.core.config import settings
    from lambdaflow.core.errors import LambdaflowError

    for day in (day for line in sys.stdin for day in line.split()):
        try:
            if day == "late":
                result = {"day": day, "result": "built", "rebuilt": run_late(settings())["rebuilt"]}
            else:
                run_batch(settings(), None if day == "today" else day)
                result = {"day": day, "result": "built"}
        except DayNotComplete as error:
            result = {"day": day, "result": "not complete", "error": str(error)}
        except LambdaflowError as error:
            result = {"day": day, "result": "failed", "error": str(error)}
        print(json.dumps(result), file=results, flush=True)
    return 0


class Producer(threading.Thread):
    """Sends the seed's plan at a steady rate and remembers how many messages the broker acknowledged."""

    def __init__(self, bootstrap: str, plan: generator.Plan, seconds: float, seed: int) -> None:
        super().__init__(name="producer", daemon=True)
        self.bootstrap = bootstrap
        self.plan = plan
        self.rate = len(plan.messages) / seconds
        self.rng = random.Random(seed)
        self.acknowledged = 0
        self.failures: list[BaseException] = []

    def run(self) -> None:
        producer = clients.producer(self.bootstrap, request_timeout_ms=60_000, delivery_timeout_ms=300_000)
        limiter = RateLimiter(self.rate)
        try:
            for message in self.plan.messages:
                limiter.wait()
                value, timestamp_ms = self._clock(message.value)
                future = producer.send(TOPIC, key=message.key, value=value, timestamp_ms=timestamp_ms)
                future.add_callback(self._acknowledged)
                future.add_errback(self.failures.append)
            producer.flush()
        finally:
            producer.close()

    def _acknowledged(self, _metadata) -> None:
        self.acknowledged += 1

    def _clock(self, value: bytes | None) -> tuple[bytes | None, int | None]:
        """Most events as produced now; 2% from a producer whose clock runs 3 hours ahead or behind:
        its event's occurred_at and the message's timestamp are both off by as much."""
        if self.rng.random() >= SKEWED_SHARE:
            return value, None
        skew = timedelta(hours=self.rng.choice((3, -3)))
        if value is None:  # a tombstone stays as it is
            return value, None
        try:
            event = json.loads(value)
            event["occurred_at"] = (datetime.fromisoformat(event["occurred_at"]) + skew).isoformat()
        except (ValueError, TypeError, KeyError):  # a malformed message stays as it is
            return value, None
        return json.dumps(event).encode(), int((datetime.now(UTC) + skew).timestamp() * 1000)


def run(scenario: Scenario, work: Path) -> int:
    rng = random.Random(scenario.seed)
    tally = Tally()
    logs = work / "logs"
    logs.mkdir(parents=True)
    data_dir = work / "data"
    broker = EmbeddedBroker(log_path=logs / "broker.log").start()
    clients.ensure_topic(broker.bootstrap, TOPIC, PARTITIONS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "LAMBDAFLOW_"))}
    env.update(
        KAFKA_BOOTSTRAP=broker.bootstrap,
        LAMBDAFLOW_TOPIC=TOPIC,
        LAMBDAFLOW_DATA_DIR=str(data_dir),
        LAMBDAFLOW_ARCHIVE_ROLL_SECONDS="2",
    )
    os.environ.update(env)  # this process's own queries and checks see the same settings
    workers = Workers(env, logs)
    builds = Builds(env, logs, tally)
    now = datetime.now(UTC)
    today = now.date()
    closed_days = [(today - timedelta(days=n)).isoformat() for n in range(HISTORY_DAYS, 0, -1)]
    plan = generator.generate(
        generator.Options(
            days=HISTORY_DAYS,
            events_per_day=scenario.events_per_day,
            seed=scenario.seed,
            until=now,
            duplicates=0.03,
            out_of_order=0.03,
            late=0.01,
            malformed=0.01,
        )
    )
    log.info(
        "%d messages for %s and today so far, over %.0f s",
        len(plan.messages),
        ", ".join(closed_days),
        scenario.duration * PRODUCING_SHARE,
    )
    try:
        producer = Producer(broker.bootstrap, plan, scenario.duration * PRODUCING_SHARE, scenario.seed)
        workers.start("archive")
        workers.start("stream")
        producer.start()
        _act(scenario, rng, broker, workers, builds, closed_days, tally)
        producer.join()
        if producer.failures:
            tally.failures.append(f"the producer failed: {producer.failures[0]}")
        log.info("producer done: %d of %d messages acknowledged", producer.acknowledged, len(plan.messages))
        builds.wait()
        workers.stop_all(tally)
        _catch_up(env, logs, tally)
        # What an operator would run: each day never built, then the days with late files, then today.
        builds.request([*(day for day in closed_days if day not in builds.built), "late", "today"])
        builds.wait()
        served_once(tally, "at the end")
        lost, duplicated = _verify(broker.bootstrap, producer.acknowledged, data_dir, env, closed_days, today, tally)
    finally:
        workers.ensure_stopped()
        builds.close()
        broker.stop()
    for failure in tally.failures:
        log.error("%s", failure)
    ok = not tally.failures and lost == 0 and duplicated == 0 and not tally.misserved and tally.moments > 0
    log.info(
        "builds: %s; broker pauses: %d; served hours checked at %d moments; work dir %s",
        dict(tally.builds),
        tally.pauses,
        tally.moments,
        work,
    )
    print(
        f"chaos: {tally.kills} kills, {len(plan.messages)} events, {lost} lost, {duplicated} duplicated, "
        f"{len(tally.misserved)} hours served twice or never",
        flush=True,
    )
    return 0 if ok else 1


def _act(
    scenario: Scenario,
    rng: random.Random,
    broker: EmbeddedBroker,
    workers: Workers,
    builds: Builds,
    closed_days: list[str],
    tally: Tally,
) -> None:
    actions = scenario.actions(rng)
    interval = scenario.duration / len(actions)
    built: list[str] = []
    for number, action in enumerate(actions, start=1):
        _sleep(rng.uniform(0.5, 1.5) * interval, builds)
        log.info("action %d of %d: %s", number, len(actions), action)
        if action.startswith("kill "):
            command = "archive" if action == "kill archiver" else "stream"
            workers.kill_9(command, rng.randrange(len(workers.running[command])))
            tally.kills += 1
            _sleep(rng.uniform(0, 1), builds)
            workers.start(command)
        elif action.startswith("second "):
            command = "archive" if action == "second archiver" else "stream"
            if len(workers.running[command]) > 1:
                workers.stop(command, tally)
            else:
                workers.start(command)
        elif action == "pause broker":
            assert broker.pid is not None  # it runs
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                _sleep(rng.uniform(2, 6), builds)
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            tally.pauses += 1
        elif action == "build a day":
            day = rng.choice(closed_days)
            built.append(day)
            builds.request([day])
        elif action == "rebuild a day":
            builds.request([rng.choice(built or closed_days)])
        elif action == "backfill":
            builds.request(closed_days)
        elif action == "batch for today, no day built":
            _until_an_hour_of_today_is_complete(builds, deadline=time.monotonic() + scenario.duration * PRODUCING_SHARE)
            builds.request(["today"])
            builds.wait()
        elif action == "batch for today":
            builds.request(["today"])
        elif action == "batch for today, the speed layer stopped":
            stopped = [worker.pid for worker in workers.running["stream"]]
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            try:
                builds.request(["today"])
                builds.wait()
                served_once(tally, "with the speed layer stopped")
            finally:
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
        elif action == "two batches for today at once":
            _two_triggers(workers.env, tally)


def _until_an_hour_of_today_is_complete(builds: Builds, deadline: float) -> None:
    """Wait (taking build results meanwhile) until the archivers have made an hour of today complete,
    so that the first batch builds today while every day behind it is still unbuilt."""
    from lambdaflow.batch.completeness import complete_hours_of
    from lambdaflow.core.config import settings

    today = datetime.now(UTC).date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    while time.monotonic() < deadline and complete_hours_of(settings(), today) <= midnight:
        _sleep(1.0, builds)


def _two_triggers(env: dict[str, str], tally: Tally) -> None:
    """Two `lambdaflow batch --today` at once: each builds, or refuses with one clear line."""
    both = [
        subprocess.Popen(
            [sys.executable, "-m", "lambdaflow", "batch", "--today"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for process in both:
        _, stderr = process.communicate(timeout=900)
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        outcome = "built" if process.returncode == 0 else f"refused: {last}"
        log.info("concurrent batch --today (pid %d): %s", process.pid, outcome)
        tally.builds["concurrent " + ("built" if process.returncode == 0 else "refused")] += 1
        if "Traceback" in stderr or (process.returncode != 0 and not last.startswith("lambdaflow: error: ")):
            tally.failures.append(f"a concurrent batch --today ended with {process.returncode}: {stderr[-1500:]}")
    served_once(tally, "after two batches for today at once")


def _sleep(seconds: float, builds: Builds) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        builds.poll()
        time.sleep(min(left, 0.2))


def _catch_up(env: dict[str, str], logs: Path, tally: Tally) -> None:
    """Both layers to the end of the log, each resuming from its own files. The checks that follow
    judge whether they got there: a layer short of the log's end shows as lost events."""
    for command in ("archive", "stream"):
        worker = WorkerProcess(command, env, logs / f"{command}-catch-up.log", "--until-idle")
        try:
            summary = worker.wait(timeout=600)
        except (AssertionError, TimeoutError, ValueError) as error:
            worker.ensure_stopped()
            tally.failures.append(f"{command} --until-idle failed: {error}")
            continue
        log.info("%s caught up: %s", command, summary)


def tally_offsets(valid: set, rejected: set, archived: list, dead: list) -> tuple[int, int, list[str]]:
    """(lost, duplicated, problems) of the raw store and the dead letter against the log."""
    lost = len(valid - set(archived)) + len(rejected - set(dead))
    duplicated = len(archived) - len(set(archived)) + len(dead) - len(set(dead))
    problems = []
    if misfiled := (set(archived) - valid) | (set(dead) - rejected):
        problems.append(f"{len(misfiled)} offsets in the wrong place or not in the log, e.g. {sorted(misfiled)[:3]}")
    return lost, duplicated, problems


def tally_served(truth: dict, served: dict, what: str) -> tuple[int, int, list[str]]:
    """(events lost, events counted twice, problems) of served rows against the truth, keyed alike."""
    lost = duplicated = 0
    problems = []
    for key in sorted(set(truth) | set(served), key=str):
        want = truth.get(key, dict.fromkeys(METRICS, 0))
        got = served.get(key, dict.fromkeys(METRICS, 0))
        difference = got["events"] - want["events"]
        lost += max(0, -difference)
        duplicated += max(0, difference)
        wrong = {m: (got[m], want[m]) for m in METRICS if got[m] != want[m]}
        if wrong:
            problems.append(f"{what} {key}: served differs from the log (served, truth): {wrong}")
    return lost, duplicated, problems


def _verify(
    bootstrap: str,
    acknowledged: int,
    data_dir: Path,
    env: dict[str, str],
    closed_days: list[str],
    today: date,
    tally: Tally,
) -> tuple[int, int]:
    records = read_all(bootstrap, TOPIC, acknowledged)
    valid: set[tuple[int, int]] = set()
    rejected: set[tuple[int, int]] = set()
    for record in records:
        position = (record.partition, record.offset)
        (valid if expected_reason(record.key, record.value, record.timestamp) is None else rejected).add(position)
    lost, duplicated, problems = tally_offsets(
        valid, rejected, archived_rows(data_dir, "raw/events"), archived_rows(data_dir, "dead_letter")
    )
    log.info("log: %d records, %d valid, %d malformed", len(records), len(valid), len(rejected))
    try:
        assert_nothing_half_written(data_dir, TOPIC)
    except AssertionError as error:
        problems.append(f"half-written files: {error}")

    truth = hourly_metrics(records)
    # Skewed clocks put events on the day before the first closed day (never built: the speed layer's)
    # and ahead of now; the range covers every day with events.
    first = min([closed_days[0], *(key[0].isoformat() for key in truth)])
    last = max([today.isoformat(), *(key[0].isoformat() for key in truth)])
    checks = [
        ("day", [], lambda key: (key[0].isoformat(),)),
        ("hour", ["--hourly"], lambda key: (key[0].isoformat(), key[1])),
    ]
    countries = sorted({key[2] for key in truth if key[2] is not None})
    checks += [
        (f"hour in {country}", ["--hourly", "--country", country], lambda key: (key[0].isoformat(), key[1]))
        for country in countries
    ]
    for what, options, key_of in checks:
        country = options[-1] if "--country" in options else None
        want: dict = {}
        for key, cell in truth.items():
            if country is None or key[2] == country:
                row = want.setdefault(key_of(key), dict.fromkeys(METRICS, 0))
                for metric in METRICS:
                    row[metric] += cell[metric]
        rows = _query(env, "--from", first, "--to", last, *options)
        served = {(row["event_date"], row["hour"]) if "hour" in row else (row["event_date"],): row for row in rows}
        if what == "day":
            sources = {row["event_date"]: row["source"] for row in rows}
            if any(sources[day] != "batch" for day in closed_days):
                problems.append(f"closed days must be served from the batch layer: {sources}")
        more_lost, more_duplicated, more_problems = tally_served(want, served, what)
        lost, duplicated = lost + more_lost, duplicated + more_duplicated
        problems += more_problems
    log.info(
        "checked %d days, their hours, and %d countries' hours against the log", len(closed_days) + 1, len(countries)
    )
    tally.failures += problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    return lost, duplicated


def _query(env: dict[str, str], *args: str) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-m", "lambdaflow", "query", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"lambdaflow query {' '.join(args)} failed: {done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["build-server"]:
        return build_server()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="Same seed, same events and schedule (default: random).")
    parser.add_argument("--duration", type=float, default=600.0, help="Seconds of faults (default 600).")
    parser.add_argument("--kills", type=int, default=22, help="kill -9s of each worker (default 22).")
    parser.add_argument("--events-per-day", type=int, default=30_000, help="Events per history day (default 30000).")
    parser.add_argument("--keep", action="store_true", help="Keep the work directory even when everything passed.")
    options = parser.parse_args(argv)
    if options.duration <= 0 or options.kills < 1 or options.events_per_day < 1:
        parser.error("--duration, --kills and --events-per-day must be positive")
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(10**6)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    work = Path(tempfile.mkdtemp(prefix=f"lambdaflow-chaos-{seed}-"))
    print(f"chaos: seed {seed} (replay: make chaos SEED={seed}); work dir {work}", flush=True)
    scenario = Scenario(seed, options.duration, options.kills, options.events_per_day)
    code = run(scenario, work)
    if code == 0 and not options.keep:
        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
