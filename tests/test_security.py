"""No credentials in the repository, and generated ones stay out of it.

The other security defaults are tested where they live: every server of
`make up` listens on 127.0.0.1 and the Airflow API wants the printed login
(tests/test_stack.py); docker-compose publishes ports on 127.0.0.1 only and
takes its secrets from the git-ignored `.env` (tests/test_compose.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A literal value given to something named like a credential, a private key, or an AWS key id.
CREDENTIAL = re.compile(
    r"""(?ix)
    (password|passwd|secret|token|api[_-]?key|fernet[_-]?key)["']?\s*[:=]\s*["'][^"'\s${}<>]{6,}["']
    | -----BEGIN\ [A-Z ]*PRIVATE\ KEY-----
    | \bAKIA[0-9A-Z]{16}\b
    """
)


def tracked_files() -> list[Path]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in listed.decode().split("\0") if name]


def test_no_credentials_in_tracked_files() -> None:
    found = []
    for path in tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary, or deleted in the working tree
        found += [f"{path.relative_to(ROOT)}: {m.group(0)[:60]}" for m in CREDENTIAL.finditer(text)]
    assert found == []


# Put together at run time, so that this file holds no credential-looking literal for the scan above.
PLANTED = [
    "AIRFLOW_ADMIN_PASSWORD" + ': "hunter2-hunter2"',
    "sec" + "ret = 'abcdef123456'",
    "-----BEGIN RSA " + "PRIVATE KEY-----",
    "aws_key_id=" + "AKIA" + "ABCDEFGHIJKLMNOP",
]


@pytest.mark.parametrize("line", PLANTED)
def test_the_scan_finds_a_planted_credential(line: str) -> None:
    assert CREDENTIAL.search(line)


@pytest.mark.parametrize(
    "line",
    [
        'password: "${AIRFLOW_ADMIN_PASSWORD:?set it in .env}"',
        "return user, passwords[user]",
        '"password": password})',
    ],
)
def test_the_scan_lets_references_pass(line: str) -> None:
    assert not CREDENTIAL.search(line)


@pytest.mark.parametrize(
    "path", [".env", "data/airflow/simple_auth_manager_passwords.json.generated", "data/airflow/airflow.cfg"]
)
def test_generated_secrets_and_the_env_file_are_ignored_by_git(path: str) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0
