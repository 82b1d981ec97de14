"""`lambdaflow serve`: the serving layer over HTTP, its dashboard, and metrics for Prometheus.

Routes (all GET):

* ``/api/query?from=D&to=D[&hourly=true][&country=CC]``: the rows `lambdaflow query` prints
  for the same arguments, as one JSON array (the last 7 days without ``from`` and ``to``);
* ``/api/status``: the object `lambdaflow status` prints;
* ``/api/workers``: per layer and partition, lag and how fresh its last commit is;
* ``/api/builds?limit=N``: the last built days, newest first, each with its reconciliation;
* ``/api/definitions``: the metrics, as defined once in ``dbt_project.yml``;
* ``/metrics``: Prometheus text (:mod:`lambdaflow.serving.prometheus`);
* ``/healthz`` (and ``/healthz/<component>``): 200 when healthy, else 503, saying why;
  ``/api/health`` the same body with 200 always (for the dashboard);
* ``/``: the dashboard, which draws from the routes above.

Bad parameters get HTTP 400 and ``{"error": "lambdaflow: error: ..."}``: the line the CLI prints
for the same mistake. Every answer is computed from published files, as the CLI's are, so the
process holds nothing the layers must wait for.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lambdaflow.core import metrics
from lambdaflow.core.boundary import read_manifest
from lambdaflow.core.config import Settings
from lambdaflow.core.errors import LambdaflowError
from lambdaflow.core.layout import reconcile_report_name
from lambdaflow.serving import health
from lambdaflow.serving.prometheus import ServingMetrics
from lambdaflow.serving.query import answer, ask
from lambdaflow.serving.status import LAYERS, WorkerFigures, status, worker_statuses

DASHBOARD = Path(__file__).with_name("dashboard")
QUERY_PARAMETERS = ("from", "to", "hourly", "country")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
MAX_BUILDS = 100


class BadRequest(LambdaflowError):
    """A parameter the CLI would refuse too: HTTP 400."""


def plotly_js() -> Path:
    """plotly.js as the `plotly` package ships it (found without importing the package)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise LambdaflowError("the plotly package is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"


def _one_line(error: Exception) -> str:
    return f"lambdaflow: error: {' '.join(str(error).split())}"


def _error(code: int, error: Exception) -> JSONResponse:
    return JSONResponse({"error": _one_line(error)}, status_code=code)


def _flag(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise BadRequest(f"{name} {text!r} is not true or false")


def _only(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, refusing any this route does not take (a typo should not be ignored)."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) if allowed else "no parameters"
        raise BadRequest(f"unknown parameter {unknown[0]!r}: {request.url.path} takes {takes}")
    return dict(request.query_params)


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="lambdaflow", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    observed = ServingMetrics(settings)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        observed.observe(getattr(route, "path", "unmatched"), response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(BadRequest)
    def bad_request(_: Request, error: BadRequest) -> JSONResponse:
        return _error(400, error)

    @app.get("/api/query")
    def query(request: Request) -> JSONResponse:
        given = _only(request, QUERY_PARAMETERS)
        try:
            question = ask(
                given.get("from"),
                given.get("to"),
                _flag("hourly", given["hourly"]) if "hourly" in given else False,
                given.get("country"),
            )
        except LambdaflowError as error:
            raise BadRequest(str(error)) from None
        try:
            return JSONResponse(answer(settings, question))
        except LambdaflowError as error:  # a published file is missing or damaged: not the asker's fault
            return _error(503, error)

    @app.get("/api/status")
    def status_(request: Request) -> JSONResponse:
        _only(request, ())
        try:
            return JSONResponse(status(settings))
        except LambdaflowError as error:
            return _error(503, error)

    @app.get("/api/workers")
    def workers(request: Request) -> JSONResponse:
        _only(request, ())
        return JSONResponse(worker_rows(settings))

    @app.get("/api/builds")
    def builds(request: Request) -> JSONResponse:
        given = _only(request, ("limit",))
        text = given.get("limit", "10")
        if not text.isdigit() or not 1 <= int(text) <= MAX_BUILDS:
            raise BadRequest(f"limit {text!r} is not a whole number from 1 to {MAX_BUILDS}")
        return JSONResponse(last_builds(settings, int(text)))

    @app.get("/api/definitions")
    def definitions(request: Request) -> JSONResponse:
        _only(request, ())
        return JSONResponse(
            [
                {"name": m.name, "description": m.description, "aggregation": m.aggregation, "money": m.money}
                for m in metrics.defined()
            ]
        )

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(observed.registry), media_type=CONTENT_TYPE_LATEST)

    def health_body() -> dict:
        found = health.check(settings)
        return {
            "healthy": all(h.healthy for h in found.values()),
            "components": {name: h.as_dict() for name, h in found.items()},
        }

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        body = health_body()
        return JSONResponse(body, status_code=200 if body["healthy"] else 503)

    @app.get("/api/health")
    def health_report(request: Request) -> JSONResponse:
        """As /healthz, always with 200: for pages, which log every 503 as an error."""
        _only(request, ())
        return JSONResponse(health_body())

    @app.get("/healthz/{component}")
    def healthz_of(component: str) -> JSONResponse:
        found = health.check(settings)
        if component not in found:
            raise BadRequest(f"no component {component!r}: one of {', '.join(found)}")
        one = found[component]
        return JSONResponse({component: one.as_dict()}, status_code=200 if one.healthy else 503)

    @app.get("/")
    def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        files = {"plotly.min.js": plotly_js(), "dashboard.js": DASHBOARD / "dashboard.js"}
        if name not in files:
            return JSONResponse({"error": f"lambdaflow: error: no file {name!r}"}, status_code=404)
        return FileResponse(files[name], headers={"Cache-Control": "max-age=3600"})

    return app


def worker_rows(settings: Settings) -> list[dict]:
    """Per layer and partition: where it stands, how far behind, and how fresh its last commit is."""
    now = time.time()
    rows = []
    for partition, documents in worker_statuses(settings).items():
        for layer in LAYERS:
            document = documents[layer]
            counters = document.get("counters") or {}
            figures = WorkerFigures.of(document, now)
            rows.append(
                {
                    "layer": layer,
                    "partition": partition,
                    "next_offset": document.get("next_offset"),
                    "end_offset": document.get("end_offset"),
                    "lag": figures.lag,
                    "status_age_seconds": _rounded(figures.status_age),
                    "running": figures.status_age is not None and figures.status_age <= health.STALE_SECONDS,
                    "commit_delay_seconds": _rounded(figures.commit_delay),
                    "last_commit_at": counters.get("last_commit_at"),
                    "messages": counters.get("messages"),
                    "rejects": sum((counters.get("rejects") or {}).values()) if counters else None,
                }
            )
    return rows


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def last_builds(settings: Settings, limit: int) -> list[dict]:
    """The last built days, most recently built first, each with its reconciliation (None: not yet)."""
    days = read_manifest(settings.documents).get("days", {})
    newest = sorted(days.items(), key=lambda item: item[1].get("built_at") or "", reverse=True)[:limit]
    rows = []
    for day, entry in newest:
        report = settings.documents.read(reconcile_report_name(date.fromisoformat(day))) or None
        rows.append(
            {
                "event_date": day,
                "built_at": entry.get("built_at"),
                "built_until": entry.get("built_until"),
                "reconciled": None
                if report is None
                else {
                    "at": report[0].get("reconciled_at"),
                    "within_threshold": all(row.get("within_threshold") is not False for row in report),
                    "metrics": {
                        row["metric"]: {
                            k: row.get(k)
                            for k in (
                                "batch",
                                "speed",
                                "difference",
                                "explained_by_late_events",
                                "explained_by_speed_lag",
                                "unexplained",
                            )
                        }
                        for row in report
                    },
                },
            }
        )
    return rows
