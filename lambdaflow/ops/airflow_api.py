"""Airflow's REST API, as the stack and the benchmark call it: JSON over HTTP to 127.0.0.1, a
token from the simple auth manager's generated login, and the health of the components."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.files import read_json


class AirflowRefused(LambdaflowError):
    """Airflow's API refused the login."""


def http_json(
    method: str, url: str, body: object = None, token: str | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """One HTTP request to a local service, straight (no proxy); returns the status and the parsed body."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, _parsed(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _parsed(error.read())


def _parsed(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def answers_ok(url: str) -> bool:
    try:
        return http_json("GET", url)[0] == 200
    except OSError:  # refused, reset or timed out: not serving yet
        return False


def airflow_token(base_url: str, user: str, password: str) -> str:
    status, body = http_json("POST", f"{base_url}/auth/token", {"username": user, "password": password})
    if status not in (200, 201) or not isinstance(body, dict) or "access_token" not in body:
        raise AirflowRefused(f"Airflow refused the login for {user!r} (HTTP {status})")
    return body["access_token"]


def airflow_login(home: Path) -> tuple[str, str] | None:
    """The user and password the simple auth manager generated on the API server's first start.

    As under `airflow standalone`, they are kept in
    $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated.
    """
    passwords = read_json(home / "simple_auth_manager_passwords.json.generated") if home.exists() else None
    if not passwords:
        return None
    user = "admin" if "admin" in passwords else sorted(passwords)[0]
    return user, passwords[user]


def healthy(base_url: str, components: tuple[str, ...]) -> bool:
    """Whether each of Airflow's ``components`` reports itself healthy."""
    status, health = http_json("GET", f"{base_url}/api/v2/monitor/health")
    return (
        status == 200
        and isinstance(health, dict)
        and all((health.get(c) or {}).get("status") == "healthy" for c in components)
    )


def logged_in(base_url: str, home: Path) -> tuple[str, str, str] | None:
    """The generated login of the Airflow home and a token for it: (user, password, token); None while
    there is no login yet or the API refuses it."""
    login = airflow_login(home)
    if login is None:
        return None
    try:
        return (*login, airflow_token(base_url, *login))
    except AirflowRefused:
        return None
