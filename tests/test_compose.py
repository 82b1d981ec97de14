"""docker-compose.yml, checked without a Docker engine.

`docker-compose config` validates the file and renders it with the secrets of
a throwaway env file; the rendered services are then checked: every command
the project's containers run exists here (lambdaflow, airflow and dbt commands
are parsed by their own command-line parsers), ports are published on
127.0.0.1 only, secrets come only from the env file, every long-running
service has a health check, and the workers, the Airflow components and the
serving process share no volume: they meet on Kafka, MinIO and Airflow's
database only, with two replicas of each worker.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from lambdaflow.batch.airflow_home import WAREHOUSE_POOL, airflow_env
from lambdaflow.core.config import Settings
from lambdaflow.core.project import DAGS_FOLDER

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
PROJECT_IMAGE = "lambdaflow:local"  # built from the Dockerfile: the checkout at /app, the locked venv at /venv
ENV_EXAMPLE = REPO / ".env.example"
APP = PurePosixPath("/app")  # where the checkout is mounted in the project's containers

SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY|_CONN)$", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?+][^}]*)?\}")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}
SHELL_KEYWORDS = {"if", "then", "else", "elif", "fi", "while", "until", "do", "done", "!", "{", "}"}
# Programs of python:3.11-slim (coreutils, diffutils, util-linux, dash) and of
# the virtualenv the `install` service creates.
BASE_PROGRAMS = {"sh", "set", "cat", "cmp", "cp", "mkdir", "rm", "flock", "exec", "test", "pip", "uv"}
PROJECT_PROGRAMS = {"lambdaflow", "airflow", "dbt"}

# Run in the project's virtualenv: parses each command with the program's own
# parser, without running it. Reads [[program, cwd, argv], ...] as JSON on
# stdin, prints one error message (or null) per command.
PARSE_COMMANDS = r"""
import contextlib, io, json, os, sys
import click

def click_check(group, name, argv):
    ctx = click.Context(group, info_name=name)
    command = group
    while isinstance(command, click.Group):
        if not argv or argv[0].startswith("-"):
            return f"{name}: no subcommand in {argv}"
        sub = command.get_command(ctx, argv[0])
        if sub is None:
            return f"{name}: no such command {argv[0]!r}"
        name, argv, command = argv[0], argv[1:], sub
        if isinstance(command, click.Group):
            ctx = click.Context(command, info_name=name, parent=ctx)
    try:
        command.make_context(name, list(argv), parent=ctx)
    except click.ClickException as error:
        return f"{name}: {error.format_message()}"
    return None

def airflow_check(argv):
    from airflow.cli.cli_parser import get_parser
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            get_parser().parse_args(argv)
    except SystemExit:
        return "airflow: " + (stderr.getvalue().strip().splitlines() or ["invalid"])[-1]
    return None

results = []
for program, cwd, argv in json.load(sys.stdin):
    os.chdir(cwd)
    if program == "lambdaflow":
        from lambdaflow.cli import cli
        results.append(click_check(cli, "lambdaflow", argv))
    elif program == "dbt":
        from dbt.cli.main import cli
        results.append(click_check(cli, "dbt", argv))
    elif program == "airflow":
        results.append(airflow_check(argv))
    else:
        results.append(f"unknown program {program}")
print(json.dumps(results))
"""


# --- docker-compose ------------------------------------------------------------------


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not on PATH; .ci/run installs it")
        pytest.skip("docker-compose is not on PATH (apt-get install docker-compose)")
    return found


def _example_keys() -> list[str]:
    keys = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(line.partition("=")[0].strip())
    return keys


def _compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """docker-compose with only env_file's secrets: none from this process's environment."""
    env = {k: v for k, v in os.environ.items() if k not in _example_keys() and not k.startswith("COMPOSE_")}
    return subprocess.run(
        [
            _docker_compose(),
            "--file",
            str(COMPOSE_FILE),
            "--project-directory",
            str(REPO),
            "--env-file",
            str(env_file),
            "--profile",
            "demo",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def fake_secrets() -> dict[str, str]:
    return {key: secrets.token_hex(16) for key in _example_keys()}


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory, fake_secrets: dict[str, str]) -> Path:
    path = tmp_path_factory.mktemp("compose") / "env"
    path.write_text("".join(f"{key}={value}\n" for key, value in fake_secrets.items()))
    return path


@pytest.fixture(scope="module")
def rendered(env_file: Path) -> dict:
    done = _compose(env_file, "config")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="module")
def services(rendered: dict) -> dict[str, dict]:
    return rendered["services"]


@pytest.fixture(scope="module")
def raw() -> dict:
    """The file as written: anchors merged, nothing interpolated."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_config_is_valid(env_file: Path) -> None:
    done = _compose(env_file, "config", "-q")
    assert done.returncode == 0, done.stderr


# --- secrets -------------------------------------------------------------------------


def test_env_example_commits_no_secret_values() -> None:
    keys = _example_keys()
    assert keys, ".env.example names no variables"
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            assert value.strip() == "", f".env.example gives {key} a value; it must stay empty"


@pytest.mark.parametrize("missing", _example_keys())
def test_every_secret_is_required(tmp_path: Path, fake_secrets: dict[str, str], missing: str) -> None:
    """A .env that leaves one variable empty (as .env.example does) stops compose with its name."""
    path = tmp_path / "env"
    path.write_text("".join(f"{k}={'' if k == missing else v}\n" for k, v in fake_secrets.items()))
    done = _compose(path, "config", "-q")
    assert done.returncode != 0, f"compose accepted an empty {missing}"
    assert missing in done.stderr and ".env" in done.stderr, done.stderr


def test_secrets_are_interpolated_never_literal(raw: dict, services: dict, fake_secrets: dict[str, str]) -> None:
    text = COMPOSE_FILE.read_text()
    used = set(INTERPOLATION.findall(text))
    assert used <= set(fake_secrets), f"variables missing from .env.example: {sorted(used - set(fake_secrets))}"
    assert set(fake_secrets) <= used, f".env.example variables compose never reads: {sorted(set(fake_secrets) - used)}"

    for name, service in raw["services"].items():
        for key, value in _environment(service).items():
            value = "" if value is None else str(value)
            if SECRET_NAME.search(key):
                assert INTERPOLATION.search(value), f"{name}: {key} holds a literal, not ${{VAR}} from .env"
            for url in re.findall(r"\w+(?:\+\w+)?://[^\s'\"]+", value):
                password = urlsplit(url).password
                assert password is None or INTERPOLATION.fullmatch(password), (
                    f"{name}: {key} has a literal password in {url}"
                )

    # Each secret reaches the containers, and only through their environment.
    flat = json.dumps(services)
    for key, value in fake_secrets.items():
        assert value in flat, f"{key} reaches no service"
        for name, service in services.items():
            outside_env = json.dumps({k: v for k, v in service.items() if k != "environment"})
            assert value not in outside_env, f"{name}: {key} appears outside its environment"


def test_env_file_is_ignored_by_git() -> None:
    ignored = subprocess.run(["git", "check-ignore", "--quiet", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".env is not in .gitignore"
    tracked = subprocess.run(["git", "ls-files", "--", ".env"], cwd=REPO, capture_output=True, text=True)
    assert tracked.stdout.strip() == "", ".env is committed"
    example = subprocess.run(["git", "check-ignore", "--quiet", ".env.example"], cwd=REPO)
    assert example.returncode == 1, ".env.example is ignored by git"


# --- ports, profiles, health ---------------------------------------------------------


def test_ports_are_published_on_loopback_only(services: dict) -> None:
    published = 0
    for name, service in services.items():
        assert service.get("network_mode") != "host", f"{name} uses the host's network"
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).split(":")
                host_ip = ":".join(parts[:-2]) if len(parts) >= 3 else None
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"
    assert published, "no service publishes a port"


def test_producer_is_only_in_the_demo_profile(services: dict) -> None:
    assert services["producer"].get("profiles") == ["demo"]
    others = {name for name, service in services.items() if service.get("profiles") and name != "producer"}
    assert not others, f"`docker compose up` would leave out {sorted(others)}"


def _one_shot(services: dict) -> set[str]:
    """Services others wait for to finish, and the demo producer (`run --rm`)."""
    finished = {
        target
        for service in services.values()
        for target, how in _depends_on(service).items()
        if how == "service_completed_successfully"
    }
    return finished | {name for name, service in services.items() if service.get("profiles")}


def test_long_running_services_have_health_checks(services: dict) -> None:
    one_shot = _one_shot(services)
    assert {"storage-init", "airflow-init", "producer"} <= one_shot
    long_running = set(services) - one_shot
    assert {
        "kafka",
        "minio",
        "redis",
        "postgres",
        "archiver",
        "stream-worker",
        "dbt-docs",
        "serve",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    } <= long_running
    for name in sorted(long_running):
        check = services[name].get("healthcheck") or {}
        test = check.get("test")
        assert test and not check.get("disable") and test[0] != "NONE", f"{name} has no health check"
        assert services[name].get("restart") in ("unless-stopped", "always"), f"{name} is not restarted"
    for name in sorted(one_shot):
        assert services[name].get("restart") in (None, "no"), f"one-shot {name} would be restarted"


def test_dependencies_wait_for_what_they_can(services: dict) -> None:
    for name, service in services.items():
        for target, how in _depends_on(service).items():
            assert target in services, f"{name} depends on unknown {target}"
            if how == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target}, which has no health check"


# --- what the project's containers run -----------------------------------------------


def _project_services(services: dict) -> dict[str, dict]:
    """The services that run this checkout: the image the Dockerfile builds from it."""
    return {name: service for name, service in services.items() if service.get("image") == PROJECT_IMAGE}


def test_project_services_run_the_image_and_meet_only_on_the_store(services: dict) -> None:
    project = _project_services(services)
    assert {
        "storage-init",
        "archiver",
        "stream-worker",
        "producer",
        "dbt-docs",
        "serve",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    } <= set(project)
    for name, service in project.items():
        build = service.get("build") or {}
        assert Path(build.get("context", "")) == REPO, f"{name} is not built from the checkout"
        assert Path(build.get("dockerfile", "Dockerfile")).name == DOCKERFILE.name
        env = _environment(service)
        assert env.get("LAMBDAFLOW_DATA_DIR") == "/data", (
            f"{name}: LAMBDAFLOW_DATA_DIR is {env.get('LAMBDAFLOW_DATA_DIR')}"
        )
        assert env.get("LAMBDAFLOW_STORAGE_URL", "").startswith("s3://"), f"{name} keeps its tables on local disk"
        assert urlsplit(env.get("AWS_ENDPOINT_URL", "")).hostname == "minio", f"{name}: AWS_ENDPOINT_URL is not MinIO"
        assert env.get("KAFKA_BOOTSTRAP", "").split(":")[0] in services, f"{name}: KAFKA_BOOTSTRAP names no service"
        assert env.get("LAMBDAFLOW_TOPIC") == "events"
        assert env.get("PATH", "").startswith("/venv/bin:"), f"{name} does not run the image's virtualenv"
    for name in ("archiver", "stream-worker", "airflow-worker"):
        assert (services[name].get("deploy") or {}).get("replicas", 1) >= 2, f"{name} runs one replica"


def test_no_volume_is_shared(services: dict) -> None:
    """The workers, the Airflow components and the serving process mount nothing: each could run on
    a host of its own. Only the stores (Kafka, MinIO, PostgreSQL) keep a volume, each its own."""
    for name, service in _project_services(services).items():
        assert not service.get("volumes"), f"{name} mounts {service.get('volumes')}: it would need the host's disk"
    owners: dict[str, list[str]] = {}
    for name, service in services.items():
        for source, _, _ in _mounts(service):
            owners.setdefault(source, []).append(name)
    shared = {source: names for source, names in owners.items() if len(names) > 1}
    assert not shared, f"volumes shared between services: {shared}"
    assert {name for names in owners.values() for name in names} == {"kafka", "minio", "postgres"}, owners


def test_airflow_components_share_one_configuration(services: dict) -> None:
    airflow = {name: _environment(s) for name, s in services.items() if name.startswith("airflow-")}
    assert set(airflow) == {
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    }
    configs = {name: {k: v for k, v in env.items() if k.startswith("AIRFLOW__")} for name, env in airflow.items()}
    first = configs["airflow-apiserver"]
    for name, config in configs.items():
        assert config == first, f"{name}'s AIRFLOW__ settings differ from the API server's"
    assert {env.get("AIRFLOW_HOME") for env in airflow.values()} == {"/opt/airflow"}  # each in its own container

    # The settings lambdaflow's own Airflow uses, except where containers differ.
    container_specific = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CORE__DAGS_FOLDER",
        "AIRFLOW__API__HOST",
        "AIRFLOW__CORE__EXECUTOR",  # tasks on any worker host, not in the scheduler's
    }
    defaults = {
        k: v
        for k, v in airflow_env(Settings.from_env({"LAMBDAFLOW_DATA_DIR": "/data"})).items()
        if k.startswith("AIRFLOW__") and k not in container_specific and k not in os.environ
    }
    for key, value in defaults.items():
        assert str(first.get(key)) == value, f"{key} is {first.get(key)!r}, lambdaflow's Airflow uses {value!r}"
    assert _host_path(first["AIRFLOW__CORE__DAGS_FOLDER"]) == DAGS_FOLDER
    assert first["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert first["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert urlsplit(first["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis" and "redis" in services
    assert urlsplit(first["AIRFLOW__CELERY__RESULT_BACKEND"]).hostname == "postgres"
    workers = [name for name, s in services.items() if _command(s)[:3] == ["airflow", "celery", "worker"]]
    assert workers == ["airflow-worker"], workers
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert first.get(key), f"{key} is not set"

    # Tasks report to the API server at the execution API URL.
    url = urlsplit(first["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    api = [
        name
        for name, s in services.items()
        if any(command[:2] == ["airflow", "api-server"] for command in _simple_commands(_command(s)))
    ]
    assert len(api) == 1
    assert url.hostname in {api[0], services[api[0]].get("hostname")}
    assert url.port == int(first.get("AIRFLOW__API__PORT", 8080)) and url.path == "/execution/"


def test_airflow_init_creates_the_warehouse_pool(services: dict) -> None:
    commands = [c for c in _simple_commands(_command(services["airflow-init"])) if c[:1] == ["airflow"]]
    assert ["airflow", "db", "migrate"] in commands
    pools = [c for c in commands if c[1:3] == ["pools", "set"]]
    assert pools and pools[0][3:5] == [WAREHOUSE_POOL, "1"], pools


def test_the_image_installs_the_lock_with_the_makefile_uv() -> None:
    makefile = (REPO / "Makefile").read_text()
    pinned = re.search(r"^UV_VERSION\s*:?=\s*(\S+)", makefile, re.MULTILINE)
    assert pinned, "Makefile pins no UV_VERSION"
    dockerfile = DOCKERFILE.read_text()
    assert f"uv=={pinned.group(1)}" in dockerfile
    assert "-r /tmp/requirements.txt" in dockerfile and "COPY requirements.txt /tmp/requirements.txt" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "data", ".env"} <= set(ignored), "the image would copy local state or secrets"


def test_every_command_exists(services: dict, tmp_path: Path) -> None:
    """What the project's containers run: programs, subcommands, options and /app paths."""
    problems: list[str] = []
    checks: list[tuple[str, str, str, list[str]]] = []  # service, program, cwd, argv
    for name, service in _project_services(services).items():
        workdir = PurePosixPath(service.get("working_dir", "/"))
        cwd = _host_path(str(workdir))
        if not cwd.is_dir():
            problems.append(f"{name}: working_dir {workdir} is not in the checkout")
            continue
        for key, value in _environment(service).items():
            if str(value).startswith(f"{APP}/") and not _host_path(str(value)).exists():
                problems.append(f"{name}: {key}={value} is not in the checkout")
        runs = [_command(service)]
        test = (service.get("healthcheck") or {}).get("test") or []
        if test[:1] == ["CMD"]:
            runs.append(list(test[1:]))
        elif test[:1] == ["CMD-SHELL"]:
            runs.append(["sh", "-c", test[1]])
        assert runs[0], f"{name} has no command"
        for argv in runs:
            for command in _simple_commands(argv):
                program = command[0]
                if program.startswith(("/venv/bin/", "/usr/local/bin/")):
                    program = PurePosixPath(program).name
                for arg in command[1:]:
                    if arg.startswith(f"{APP}/") and not _host_path(arg).exists():
                        problems.append(f"{name}: {arg} is not in the checkout")
                if program in PROJECT_PROGRAMS:
                    checks.append((name, program, str(cwd), command[1:]))
                elif program == "python":
                    problems.extend(_python_problems(name, command))
                elif program not in BASE_PROGRAMS:
                    problems.append(f"{name}: runs {command[0]}, which the image does not have")
    programs = {program for _, program, _, _ in checks}
    assert programs == PROJECT_PROGRAMS, f"expected lambdaflow, airflow and dbt commands, found {programs}"

    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    done = subprocess.run(
        [sys.executable, "-c", PARSE_COMMANDS],
        input=json.dumps([[program, cwd, argv] for _, program, cwd, argv in checks]),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for (name, program, _, argv), error in zip(checks, json.loads(done.stdout.strip().splitlines()[-1]), strict=False):
        if error:
            problems.append(f"{name}: `{shlex.join([program, *argv])}`: {error}")
    assert not problems, "\n".join(problems)


# --- helpers -------------------------------------------------------------------------


def _host_path(container_path: str) -> Path:
    path = PurePosixPath(container_path)
    assert path == APP or APP in path.parents, f"{container_path} is outside {APP}"
    return REPO.joinpath(*path.relative_to(APP).parts)


def _environment(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def _depends_on(service: dict) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return {target: "service_started" for target in depends}
    return {target: (how or {}).get("condition", "service_started") for target, how in depends.items()}


def _mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each volume, in either of compose's notations."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mode = "ro" if volume.get("read_only") else "rw"
            mounts.append((str(volume.get("source")), str(volume["target"]), mode))
        else:
            parts = str(volume).split(":")
            mode = parts[2] if len(parts) > 2 else "rw"
            mounts.append((parts[0], parts[1], mode))
    return mounts


def _command(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _simple_commands(argv: list[str]) -> list[list[str]]:
    """The simple commands argv runs: itself, or each one of an `sh -c` script
    (and the command that `exec` or `flock FILE` runs)."""
    if not argv:
        return []
    if argv[0] in ("sh", "bash") and len(argv) >= 3 and argv[1] == "-c":
        commands = [["sh"]]
        for line in argv[2].splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            current: list[str] = []
            for token in [*lexer, ";"]:
                if token in SHELL_OPERATORS:
                    while current and current[0] in SHELL_KEYWORDS:
                        current.pop(0)
                    if current:
                        commands.extend(_simple_commands(_strip_redirects(current)))
                    current = []
                else:
                    current.append(token)
        return commands
    if argv[0] == "exec":
        return [["exec"], *_simple_commands(argv[1:])]
    if argv[0] == "flock" and len(argv) >= 3:
        return [["flock", argv[1]], *_simple_commands(argv[2:])]
    return [argv]


def _strip_redirects(tokens: list[str]) -> list[str]:
    kept, skip = [], False
    for token in tokens:
        if skip:
            skip = False
        elif token in (">", ">>", "<", "2>", "2>&1"):
            skip = token != "2>&1"
        else:
            kept.append(token)
    return kept


def _python_problems(name: str, command: list[str]) -> list[str]:
    if "-c" in command:
        code = command[command.index("-c") + 1]
        try:
            compile(code, f"<{name}>", "exec")
        except SyntaxError as error:
            return [f"{name}: python -c does not compile: {error}"]
    return []
