"""The HTTP API (SPEC 5.3). Every route is a thin translation to one engine call:
the engine authorizes, validates and decides; this module only maps shapes and
status codes, so the Python API, the CLI and HTTP can never disagree."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..domain.priorities import Priority
from ..engine import MAX_PAGE, Engine
from ..store import stats
from .auth import bearer, current_user_dependency
from .dashboard import mount_dashboard
from .errors import error_response, install_error_handlers
from .prometheus import OperatorCollector
from .rate_limits import SubmissionLimiter
from .schemas import (
    ErrorResponse,
    Health,
    JobOut,
    JobPage,
    JobTypeList,
    JobTypeOut,
    LimitOut,
    LimitsOut,
    LimitsUpdate,
    LogPage,
    Me,
    OperatorMetrics,
    OrganizationList,
    PauseState,
    PauseTarget,
    RegisterJobType,
    StatusName,
    SubmitJob,
    UpdateJobType,
)

API_PREFIX = "/api/v1"


def _documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


# Every authenticated route may answer these.
_COMMON = _documented(400, 401, 413, 422, 500)


def body_limit(engine: Engine) -> int:
    """The request size cap: room for the largest acceptable ``parameters``, even
    when JSON escapes inflate it, plus the other fields of the body."""
    return 2 * engine.settings.max_parameters_bytes + 16 * 1024


class JobsCollector(Collector):
    """Reads the job table at scrape time, so every API process exposes the same
    figures (counters kept in one process's memory would disagree)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with self.engine.store.read() as conn:
            counts = stats.job_counts(conn)
            attempts = stats.attempt_counts(conn)
            oldest = stats.oldest_due_age(conn)
            buckets, count, total = stats.duration_histogram(conn)
        jobs = GaugeMetricFamily(
            "dartwing_jobs_jobs", "Jobs in the store by status and priority",
            labels=["status", "priority"])
        for status, priority, n in counts:
            jobs.add_metric([status, _priority_label(priority)], n)
        yield jobs
        outcomes = GaugeMetricFamily(
            "dartwing_jobs_attempts", "Recorded attempts (execution log rows) by outcome",
            labels=["outcome"])
        for outcome, n in attempts:
            outcomes.add_metric([outcome], n)
        yield outcomes
        yield HistogramMetricFamily(
            "dartwing_jobs_attempt_duration_seconds",
            "Duration of finished attempts (from the execution log)",
            buckets=[*((repr(le), n) for le, n in zip(stats.DURATION_BUCKETS_SECONDS, buckets,
                                                       strict=True)),
                     ("+Inf", count)],
            sum_value=total)
        yield GaugeMetricFamily(
            "dartwing_jobs_oldest_due_seconds",
            "How long the longest-waiting claimable job has been due", value=oldest)


def _priority_label(value: int) -> str:
    try:
        return Priority(value).label
    except ValueError:
        return str(value)


def create_app(engine: Engine) -> FastAPI:
    """Routes are closures over ``engine`` (no module-level state), so one process
    can serve several apps, e.g. in tests. Their dependencies are therefore given
    as parameter defaults: string annotations could not see the local names."""
    app = FastAPI(
        title="Dartwing Jobs",
        version="1",
        description="A durable, multi-tenant background job engine. Authenticate with "
                    "`Authorization: Bearer <token>`.",
    )
    app.state.engine = engine
    install_error_handlers(app, max_body_bytes=body_limit(engine),
                           max_depth=engine.settings.max_parameters_depth + 8)
    limiter = SubmissionLimiter(engine.settings)
    user = current_user_dependency(engine)
    api = APIRouter(prefix=API_PREFIX, responses=_COMMON)

    @api.post("/jobs", status_code=201, response_model=JobOut,
              responses=_documented(403, 409, 429), tags=["jobs"])
    def submit_job(body: SubmitJob, actor: str = Depends(user)) -> dict[str, Any]:
        """Submit a job. 403 for an organization you are not an active member of
        (whether it exists or not); 409 ``duplicate_job`` names the active twin."""
        with engine.transaction() as tx:
            job = engine.submit_job(
                body.job_type, body.organization, body.parameters, actor=actor,
                depends_on=body.depends_on, run_at=body.run_at, priority=body.priority,
                tx=tx,
            )
            limiter.charge(tx, body.organization, actor)
        return job.to_dict()

    @api.get("/jobs", response_model=JobPage, responses=_documented(403), tags=["jobs"])
    def list_jobs(
        organization: Annotated[str | None, Query(max_length=140)] = None,
        status: Annotated[list[StatusName] | None, Query()] = None,
        job_type: Annotated[str | None, Query(max_length=140)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
        actor: str = Depends(user),
    ) -> dict[str, Any]:
        """Visible jobs, newest first; pass ``next_cursor`` back as ``cursor``."""
        jobs, next_cursor = engine.list_jobs(
            actor=actor, organization=organization, status=list(status or []),
            job_type=job_type, limit=limit, cursor=cursor,
        )
        return {"items": [j.to_dict() for j in jobs], "next_cursor": next_cursor}

    @api.get("/jobs/{job_id}", response_model=JobOut, responses=_documented(404),
             tags=["jobs"])
    def get_job(job_id: str, actor: str = Depends(user)) -> dict[str, Any]:
        return engine.get_job(job_id, actor=actor).to_dict()

    @api.post("/jobs/{job_id}/cancel", response_model=JobOut,
              responses=_documented(403, 404, 409), tags=["jobs"])
    def cancel_job(job_id: str, actor: str = Depends(user)) -> dict[str, Any]:
        """``canceled`` at once, or ``running`` with ``cancel_requested: true``."""
        return engine.cancel_job(job_id, actor=actor).to_dict()

    @api.post("/jobs/{job_id}/retry", response_model=JobOut,
              responses=_documented(403, 404, 409), tags=["jobs"])
    def retry_job(job_id: str, actor: str = Depends(user)) -> dict[str, Any]:
        """Requeue a ``dead_letter`` or ``canceled`` job."""
        return engine.retry_job(job_id, actor=actor).to_dict()

    @api.get("/jobs/{job_id}/logs", response_model=LogPage, responses=_documented(404),
             tags=["jobs"])
    def job_logs(job_id: str, actor: str = Depends(user)) -> dict[str, Any]:
        return {"items": engine.job_logs(job_id, actor=actor)}

    @api.get("/job-types", response_model=JobTypeList, tags=["job types"])
    def list_job_types(actor: str = Depends(user)) -> dict[str, Any]:
        return {"items": engine.job_types.list()}

    @api.post("/job-types", status_code=201, response_model=JobTypeOut,
              responses=_documented(403, 409), tags=["job types"])
    def register_job_type(body: RegisterJobType, actor: str = Depends(user)) -> dict[str, Any]:
        """System Manager only."""
        fields = body.model_dump(exclude={"name"})
        return engine.job_types.register(body.name, actor=actor, **fields)

    @api.patch("/job-types/{name}", response_model=JobTypeOut,
               responses=_documented(403, 404), tags=["job types"])
    def update_job_type(name: str, body: UpdateJobType,
                        actor: str = Depends(user)) -> dict[str, Any]:
        """System Manager only; only the fields sent change."""
        return engine.job_types.update(name, actor=actor, **body.model_dump(exclude_unset=True))

    @api.get("/organizations", response_model=OrganizationList, tags=["identity"])
    def list_organizations(actor: str = Depends(user)) -> dict[str, Any]:
        return {"items": engine.list_organizations(actor=actor)}

    @api.get("/metrics", tags=["metrics"], responses=_documented(403, 404))
    def organization_metrics(
        organization: str,
        window_hours: Annotated[float, Query(gt=0, le=8784)] = 24,
        actor: str = Depends(user),
    ) -> dict[str, Any]:
        """Per-organization metrics over a window (SPEC 5.5): jobs by status, queue
        depth by priority, processing time percentiles and failure rate per job type."""
        return engine.get_metrics(organization, window_hours=window_hours, actor=actor)

    @api.post("/pause", response_model=PauseState, responses=_documented(403, 404),
              tags=["operations"])
    def pause(body: PauseTarget, actor: str = Depends(user)) -> dict[str, Any]:
        """System Manager: pause an organization, a job type, or one job type of one
        organization. Its jobs stay queued; no worker claims them until resumed."""
        return engine.pause(organization=body.organization, job_type=body.job_type,
                            actor=actor)

    @api.post("/resume", response_model=PauseState, responses=_documented(403, 404),
              tags=["operations"])
    def resume(body: PauseTarget, actor: str = Depends(user)) -> dict[str, Any]:
        """System Manager: undo a pause; the waiting jobs run in their order."""
        return engine.resume(organization=body.organization, job_type=body.job_type,
                             actor=actor)

    @api.get("/limits", response_model=LimitsOut, responses=_documented(403),
             tags=["operations"])
    def list_limits(actor: str = Depends(user)) -> dict[str, Any]:
        """System Manager: default limits, per-organization overrides, pauses."""
        return engine.list_limits(actor=actor)

    @api.put("/organizations/{organization}/limits", response_model=LimitOut,
             responses=_documented(403, 404), tags=["operations"])
    def set_limits(organization: str, body: LimitsUpdate,
                   actor: str = Depends(user)) -> dict[str, Any]:
        """System Manager: an organization's concurrency limit (optionally for one
        job type) and queued-job quota. Workers apply it at their next claim."""
        fields = body.model_dump(exclude_unset=True)
        fields.pop("job_type", None)
        return engine.set_limits(organization, job_type=body.job_type, actor=actor, **fields)

    @api.get("/operator/metrics", response_model=OperatorMetrics, responses=_documented(403),
             tags=["metrics"])
    def operator_metrics(actor: str = Depends(user)) -> dict[str, Any]:
        """System Manager: running jobs by organization, with limits and pauses."""
        return engine.get_operator_metrics(actor=actor)

    @api.get("/me", response_model=Me, tags=["identity"])
    def me(actor: str = Depends(user)) -> dict[str, Any]:
        return engine.whoami(actor)

    @api.get("/events", tags=["realtime"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}, **_documented(503)})
    async def events(
        request: Request,
        organization: str,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> Any:
        """Server-Sent Events of one organization's jobs (the same events as the
        Socket.IO room); ``Last-Event-ID`` resumes after the last event seen."""
        hub = getattr(request.app.state, "realtime", None)
        if hub is None:
            return error_response(503, "unavailable", "realtime events are not served here")
        last = request.headers.get("last-event-id")
        since = int(last) if last and last.isdigit() else None
        token = credentials.credentials if credentials is not None else None
        stream = await hub.open_stream(token, organization, since)
        return StreamingResponse(stream.sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    app.include_router(api)
    mount_dashboard(app)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(engine))
    registry.register(OperatorCollector(engine))

    @app.get("/healthz", response_model=Health, responses=_documented(503), tags=["operations"])
    def healthz() -> Any:
        """Answers 200 only if the database answers; load balancers rely on it."""
        try:
            with engine.store.read() as conn:
                stats.ping(conn)
        except Exception:
            return error_response(503, "unavailable", "the database does not answer")
        return {"status": "ok", "database": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"],
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def prometheus_metrics() -> Response:
        """Prometheus text exposition for operators (not tenant-scoped: keep it
        on an operators' network)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["API_PREFIX", "JSONResponse", "body_limit", "create_app"]
