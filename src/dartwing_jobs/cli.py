"""``dartwing-jobs``: the operator's command line (SPEC 5.6).

It is trusted code with direct database access, so every call passes
``actor=None`` and goes through the same ``Engine`` as the HTTP API: the CLI
never decides anything the service layer would not, and never writes SQL.

Output is meant for both people and scripts. A command that creates something
prints only its id (``token create``: only the token) so that
``ID=$(dartwing-jobs submit ...)`` works; ``--json`` gives the HTTP API's shapes;
read commands otherwise print tables. Refusals and failures are one
``error: <code>: <message>`` line on stderr with exit status 1, usage errors exit
2, and no traceback ever reaches the terminal.

New commands plug in through :data:`COMMANDS`: write a builder that adds its
subparser (with ``parents=[common]`` so ``--json`` and ``--database-url`` work
after the subcommand) and sets ``run`` to a function taking a :class:`Context`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from typing import Any, TextIO, TypeAlias

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from .domain.errors import DartwingError, ValidationError
from .domain.priorities import PRIORITY_NAMES
from .domain.statuses import TERMINAL, Status
from .engine import MEMBER_ROLES, MEMBER_STATUSES, Engine
from .views import Job

PROG = "dartwing-jobs"
#: How often ``submit --wait`` polls the job; a module constant so tests can shrink it.
WAIT_POLL_SECONDS = 0.2
#: Unexpected errors are cut to this length: one readable line, not a dump.
MAX_INTERNAL_MESSAGE = 300

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandFailed(Exception):
    """A failure the CLI itself detects (a waited-for job that did not complete),
    reported like a ``DartwingError`` but with a code the engine does not have."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Context:
    """What a command's ``run`` receives. The engine is opened lazily so that
    commands which never touch the database (or open their own, like a future
    ``serve``) pay nothing for it, and it is always closed by :func:`main`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._engine: Engine | None = None

    @property
    def as_json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            try:
                self._engine = Engine(getattr(self.args, "database_url", None))
            except ValueError as exc:  # a bad URL or setting (pydantic's errors are ValueErrors)
                raise CommandFailed("configuration", configuration_message(exc)) from exc
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            with suppress(Exception):  # closing must never mask the command's own outcome
                self._engine.close()
            self._engine = None

    # -- output ------------------------------------------------------------

    @staticmethod
    def line(text: str) -> None:
        # Plain print, not rich: ids and tokens must reach stdout byte for byte.
        print(text, file=sys.stdout, flush=True)

    def emit_json(self, value: Any) -> None:
        self.line(json.dumps(value, indent=2, ensure_ascii=False))

    def created(self, ident: str, obj: Any) -> int:
        """Scripts capture the id; ``--json`` callers get the whole object."""
        if self.as_json:
            self.emit_json(obj)
        else:
            self.line(ident)
        return 0

    @staticmethod
    def console(file: TextIO | None = None) -> Console:
        # A pipe gets a wide fixed width: 80 columns would fold every job id.
        target = file if file is not None else sys.stdout
        console = Console(file=target, highlight=False)
        if not console.is_terminal:
            console = Console(file=target, highlight=False, width=160)
        return console

    def table(self, table: Table) -> None:
        self.console().print(table)


Runner = Callable[[Context], int]
Builder = Callable[[SubParsers, argparse.ArgumentParser], None]

#: Top-level commands, name -> builder. Others add ``worker``, ``serve``... here.
COMMANDS: dict[str, Builder] = {}


def command(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        if name in COMMANDS:
            raise RuntimeError(f"CLI command {name!r} is defined twice")
        COMMANDS[name] = builder
        return builder

    return register


def leaf(
    sub: SubParsers, name: str, common: argparse.ArgumentParser, run: Runner, help_text: str
) -> argparse.ArgumentParser:
    """A runnable subcommand; ``common`` is what makes ``--json`` legal after it."""
    parser = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
    parser.set_defaults(run=run)
    return parser


def group(sub: SubParsers, name: str, help_text: str) -> SubParsers:
    """A command made of subcommands (``jobs list``...); naming none is a usage error."""
    parser = sub.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


# -- rendering ---------------------------------------------------------------


def cell(value: Any) -> Text:
    """Data is shown as data: a name like ``[red]x`` must not become rich markup."""
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, dict | list):
        return Text(json.dumps(value, ensure_ascii=False, sort_keys=True))
    return Text(str(value))


def rows_table(
    title: str, columns: Sequence[tuple[str, str]], items: Iterable[Mapping[str, Any]],
    caption: str | None = None,
) -> Table:
    table = Table(title=title, caption=caption, title_justify="left")
    for _, header in columns:
        table.add_column(header, no_wrap=header in ("id", "job id"), overflow="fold")
    for item in items:
        table.add_row(*(cell(item.get(key)) for key, _ in columns))
    return table


def job_detail(job: Job) -> Table:
    table = Table(title=f"job {job.id}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in job.to_dict().items():
        table.add_row(key, cell(value))
    return table


def show_job(ctx: Context, job: Job) -> int:
    if ctx.as_json:
        ctx.emit_json(job.to_dict())
    else:
        ctx.table(job_detail(job))
    return 0


def one_line(text: str) -> str:
    return " ".join(text.split())


def report(code: str, message: str, details: Mapping[str, Any] | None = None) -> int:
    extra = ", ".join(
        f"{key}: {value}" for key, value in (details or {}).items()
        if key not in ("field", "traceback") and value is not None
    )
    text = f"error: {code}: {one_line(message)}"
    if extra:
        text += f" ({one_line(extra)})"
    print(text, file=sys.stderr, flush=True)
    return 1


def internal_message(exc: BaseException) -> str:
    """The driver's own error, not SQLAlchemy's wrapper with its links and SQL."""
    inner = getattr(exc, "orig", None) or exc
    lines = str(inner).strip().splitlines()
    text = f"{type(inner).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    if len(text) > MAX_INTERNAL_MESSAGE:
        text = text[: MAX_INTERNAL_MESSAGE - 3] + "..."
    return text


def configuration_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic: say which setting is wrong, briefly
        with suppress(Exception):
            first = errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return f"DARTWING_JOBS_{where.upper()}: {first.get('msg', '')}"
    return str(exc)


# -- db ----------------------------------------------------------------------


def run_db_upgrade(ctx: Context) -> int:
    ctx.engine.migrate()
    if ctx.as_json:
        ctx.emit_json({"ok": True})
    else:
        ctx.line("database schema is up to date")
    return 0


@command("db")
def build_db(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    db = group(sub, "db", "database schema")
    leaf(db, "upgrade", common, run_db_upgrade, "apply migrations (running it twice is harmless)")


# -- organizations, users, persons, members ----------------------------------


def run_org_create(ctx: Context) -> int:
    org = ctx.engine.create_organization(ctx.args.name, title=ctx.args.title)
    return ctx.created(org["name"], org)


@command("org")
def build_org(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    org = group(sub, "org", "organizations (tenants)")
    p = leaf(org, "create", common, run_org_create, "create an organization")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--title", help="display title (default: the name)")


def run_user_create(ctx: Context) -> int:
    user = ctx.engine.create_user(
        ctx.args.email, full_name=ctx.args.full_name or "",
        system_manager=ctx.args.system_manager,
    )
    return ctx.created(user["id"], user)


@command("user")
def build_user(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    user = group(sub, "user", "users (API callers)")
    p = leaf(user, "create", common, run_user_create, "create a user with a linked person")
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("--system-manager", action="store_true", help="grant the System Manager role")
    p.add_argument("--full-name", help="display name (default: the e-mail)")


def run_person_create(ctx: Context) -> int:
    person = ctx.engine.create_person(ctx.args.name)
    return ctx.created(person["id"], person)


@command("person")
def build_person(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    person = group(sub, "person", "persons")
    p = leaf(person, "create", common, run_person_create, "create a person with no user")
    p.add_argument("name", metavar="NAME")


def run_member_add(ctx: Context) -> int:
    member = ctx.engine.set_member(ctx.args.org, ctx.args.person, role=ctx.args.role,
                                   create=True)
    return ctx.created(str(member["id"]), member)


def run_member_set(ctx: Context) -> int:
    member = ctx.engine.set_member(ctx.args.org, ctx.args.person, role=ctx.args.role,
                                   status=ctx.args.status, create=False)
    return ctx.created(str(member["id"]), member)


@command("member")
def build_member(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    member = group(sub, "member", "organization membership")
    add = leaf(member, "add", common, run_member_add, "make a person a member")
    change = leaf(member, "set", common, run_member_set, "change a membership")
    for p in (add, change):
        p.add_argument("org", metavar="ORG")
        p.add_argument("person", metavar="EMAIL_OR_PERSON",
                       help="a user's e-mail, a person id or a person's name")
    add.add_argument("--role", choices=MEMBER_ROLES, default="member")
    change.add_argument("--status", choices=MEMBER_STATUSES, required=True)
    change.add_argument("--role", choices=MEMBER_ROLES)


# -- tokens --------------------------------------------------------------------


def run_token_create(ctx: Context) -> int:
    token = ctx.engine.create_token(ctx.args.email, expires_in_days=ctx.args.expires_in_days)
    return ctx.created(token["token"], token)


def run_token_list(ctx: Context) -> int:
    tokens = ctx.engine.list_tokens(ctx.args.email)
    if ctx.as_json:
        ctx.emit_json({"items": tokens})
    else:
        ctx.table(rows_table(
            f"tokens of {ctx.args.email}",
            [("id", "id"), ("created_at", "created"), ("expires_at", "expires"),
             ("revoked_at", "revoked")],
            tokens,
        ))
    return 0


def run_token_revoke(ctx: Context) -> int:
    ctx.engine.revoke_token(ctx.args.token_id)
    if ctx.as_json:
        ctx.emit_json({"id": ctx.args.token_id, "revoked": True})
    return 0


@command("token")
def build_token(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    token = group(sub, "token", "API tokens")
    create = leaf(token, "create", common, run_token_create,
                  "create a token and print it (it is shown only once)")
    create.add_argument("email", metavar="EMAIL")
    create.add_argument("--expires-in-days", type=float, metavar="N")
    listing = leaf(token, "list", common, run_token_list, "list a user's tokens (never the secret)")
    listing.add_argument("email", metavar="EMAIL")
    revoke = leaf(token, "revoke", common, run_token_revoke, "revoke a token")
    revoke.add_argument("token_id", metavar="TOKEN_ID")


# -- job types -----------------------------------------------------------------


def run_job_type_add(ctx: Context) -> int:
    a = ctx.args
    job_type = ctx.engine.job_types.register(
        a.name, handler=a.handler, default_priority=a.priority, default_timeout=a.timeout,
        max_retries=a.max_retries, retry_backoff=a.backoff, retry_backoff_max=a.backoff_max,
        deduplicate=False if a.no_deduplicate else None,
    )
    return ctx.created(job_type["name"], job_type)


def run_job_type_list(ctx: Context) -> int:
    types = ctx.engine.job_types.list()
    if ctx.as_json:
        ctx.emit_json({"items": types})
    else:
        ctx.table(rows_table("job types", [
            ("name", "name"), ("handler", "handler"), ("default_priority", "priority"),
            ("default_timeout", "timeout s"), ("max_retries", "retries"),
            ("retry_backoff", "backoff s"), ("retry_backoff_max", "backoff max s"),
            ("deduplicate", "dedup"), ("enabled", "enabled"),
        ], types))
    return 0


@command("job-type")
def build_job_type(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    jt = group(sub, "job-type", "job types")
    add = leaf(jt, "add", common, run_job_type_add, "register a job type")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--handler", required=True, metavar="MOD:FUNC",
                     help="inside DARTWING_JOBS_HANDLER_MODULES")
    add.add_argument("--priority", choices=PRIORITY_NAMES)
    add.add_argument("--timeout", type=int, metavar="S", help="seconds, 0 = no timeout")
    add.add_argument("--max-retries", type=int, metavar="N", help="0 = the first failure is final")
    add.add_argument("--backoff", type=float, metavar="S", help="base retry delay")
    add.add_argument("--backoff-max", type=float, metavar="S", help="longest retry delay")
    add.add_argument("--no-deduplicate", action="store_true",
                     help="accept identical jobs while one is active")
    leaf(jt, "list", common, run_job_type_list, "list job types")


# -- submit --------------------------------------------------------------------


def parse_params(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"--params is not valid JSON: {exc}", field="parameters") from exc
    # Anything but an object is the engine's refusal to make, with its own message.
    return value  # type: ignore[no-any-return]


def run_submit(ctx: Context) -> int:
    a = ctx.args
    job = ctx.engine.submit_job(
        a.job_type, a.org, parse_params(a.params), depends_on=a.depends_on,
        run_at=a.run_at, priority=a.priority,
    )
    if not a.wait:
        return ctx.created(job.id, job.to_dict())
    if not ctx.as_json:
        ctx.line(job.id)  # first, so a script has the id even if the wait is interrupted
    return wait_for(ctx, job)


def describe(job: Job) -> str:
    text = job.status
    if job.progress_message:
        text += f": {job.progress_message}"
    return escape(text)


def wait_for(ctx: Context, job: Job) -> int:
    """Progress goes to stderr: stdout stays the id (or the final JSON)."""
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
        TimeElapsedColumn(), console=Context.console(sys.stderr),
    )
    with progress:
        task = progress.add_task(describe(job), total=100, completed=int(job.progress))
        while Status(job.status) not in TERMINAL:
            time.sleep(WAIT_POLL_SECONDS)
            job = ctx.engine.get_job(job.id)
            progress.update(task, completed=job.progress, description=describe(job))
    if ctx.as_json:
        ctx.emit_json(job.to_dict())
    if job.status == Status.COMPLETED.value:
        return 0
    reason = f"job {job.id} ended {job.status}"
    if job.error:
        reason += f": {job.error.get('type')}: {job.error.get('message')}"
    raise CommandFailed(f"job_{job.status}", reason)


@command("submit")
def build_submit(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    p = leaf(sub, "submit", common, run_submit, "submit a job and print its id")
    p.add_argument("job_type", metavar="TYPE")
    p.add_argument("--org", required=True, metavar="ORG")
    p.add_argument("--params", metavar="JSON", help="a JSON object")
    p.add_argument("--priority", choices=PRIORITY_NAMES)
    p.add_argument("--depends-on", action="append", metavar="ID",
                   help="a job of the same organization (repeatable)")
    p.add_argument("--run-at", metavar="ISO", help="not before this time, e.g. 2026-10-01T08:00Z")
    p.add_argument("--wait", action="store_true",
                   help="show progress; exit 1 unless the job ends completed")


# -- jobs ----------------------------------------------------------------------

JOB_COLUMNS = [
    ("id", "id"), ("job_type", "type"), ("organization", "organization"),
    ("status", "status"), ("priority", "priority"), ("progress", "progress"),
    ("attempts", "attempts"), ("created_at", "created"),
]


def run_jobs_list(ctx: Context) -> int:
    a = ctx.args
    jobs, next_cursor = ctx.engine.list_jobs(
        organization=a.org, status=a.status, job_type=a.type, limit=a.limit, cursor=a.cursor,
    )
    if ctx.as_json:
        ctx.emit_json({"items": [j.to_dict() for j in jobs], "next_cursor": next_cursor})
    else:
        caption = f"more: --cursor {next_cursor}" if next_cursor else None
        ctx.table(rows_table("jobs", JOB_COLUMNS, [j.to_dict() for j in jobs], caption))
    return 0


def run_jobs_show(ctx: Context) -> int:
    return show_job(ctx, ctx.engine.get_job(ctx.args.job_id))


def run_jobs_cancel(ctx: Context) -> int:
    return show_job(ctx, ctx.engine.cancel_job(ctx.args.job_id))


def run_jobs_retry(ctx: Context) -> int:
    return show_job(ctx, ctx.engine.retry_job(ctx.args.job_id))


def run_jobs_logs(ctx: Context) -> int:
    entries = ctx.engine.job_logs(ctx.args.job_id)
    if ctx.as_json:
        ctx.emit_json({"items": entries})
    else:
        ctx.table(rows_table(f"execution log of {ctx.args.job_id}", [
            ("attempt", "attempt"), ("worker_id", "worker"), ("started_at", "started"),
            ("finished_at", "finished"), ("duration_ms", "ms"), ("outcome", "outcome"),
            ("error", "error"),
        ], entries))
    return 0


@command("jobs")
def build_jobs(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    jobs = group(sub, "jobs", "inspect and manage jobs")
    listing = leaf(jobs, "list", common, run_jobs_list, "list jobs, newest first")
    listing.add_argument("--org", metavar="ORG")
    listing.add_argument("--status", action="append", choices=[s.value for s in Status],
                         help="repeatable")
    listing.add_argument("--type", metavar="TYPE")
    listing.add_argument("--limit", type=int, default=50, metavar="N", help="at most 200")
    listing.add_argument("--cursor", help="next_cursor of the previous page")
    for name, run, help_text in (
        ("show", run_jobs_show, "one job"),
        ("cancel", run_jobs_cancel, "cancel a job (a running one is asked to stop)"),
        ("retry", run_jobs_retry, "queue a dead_letter or canceled job again"),
        ("logs", run_jobs_logs, "the job's execution log, one row per attempt"),
    ):
        leaf(jobs, name, common, run, help_text).add_argument("job_id", metavar="ID")


# -- metrics -----------------------------------------------------------------------


def run_metrics(ctx: Context) -> int:
    m = ctx.engine.get_metrics(ctx.args.org, window_hours=ctx.args.window_hours)
    if ctx.as_json:
        ctx.emit_json(m)
        return 0
    console = ctx.console()
    console.print(f"organization {m['organization']}, last {m['window_hours']:g} h")
    status = Table(title="jobs by status", title_justify="left")
    depth = Table(title="queue depth by priority", title_justify="left")
    for table, values in ((status, m["jobs_by_status"]), (depth, m["queue_depth_by_priority"])):
        table.add_column("")
        table.add_column("jobs", justify="right")
        for key, n in values.items():
            table.add_row(key, str(n))
        console.print(table)
    per_type = Table(title="per job type", title_justify="left")
    for header in ("job type", "done", "avg ms", "p50 ms", "p95 ms", "max ms", "attempts",
                   "failures", "failure rate"):
        per_type.add_column(header, justify="left" if header == "job type" else "right")
    for name in sorted(set(m["processing_time"]) | set(m["failure_rate"])):
        p = m["processing_time"].get(name, {})
        f = m["failure_rate"].get(name, {})
        per_type.add_row(cell(name), *(cell(p.get(k)) for k in
                                       ("count", "avg_ms", "p50_ms", "p95_ms", "max_ms")),
                         *(cell(f.get(k)) for k in ("attempts", "failures", "rate")))
    console.print(per_type)
    return 0


@command("metrics")
def build_metrics(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    p = leaf(sub, "metrics", common, run_metrics, "per-organization metrics")
    p.add_argument("--org", required=True, help="organization")
    p.add_argument("--window-hours", type=float, default=24.0)


# -- claim controls (issue 10) ----------------------------------------------------


def _pause_target(ctx: Context) -> dict[str, Any]:
    if ctx.args.org is None and ctx.args.type is None:
        raise ValidationError("name an organization (--org), a job type (--type), or both")
    return {"organization": ctx.args.org, "job_type": ctx.args.type}


def _show_pause(ctx: Context, state: dict[str, Any]) -> int:
    if ctx.as_json:
        ctx.emit_json(state)
    else:
        what = " ".join(f"{k} {v}" for k, v in (("organization", state["organization"]),
                                                 ("job type", state["job_type"])) if v)
        ctx.line(f"{what}: {'paused' if state['paused'] else 'resumed'}")
    return 0


def run_pause(ctx: Context) -> int:
    return _show_pause(ctx, ctx.engine.pause(**_pause_target(ctx)))


def run_resume(ctx: Context) -> int:
    return _show_pause(ctx, ctx.engine.resume(**_pause_target(ctx)))


@command("pause")
def build_pause(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    for name, run, text in (
        ("pause", run_pause, "pause an organization, a job type, or both together: their "
                             "jobs stay queued and are not started"),
        ("resume", run_resume, "resume what pause stopped; waiting jobs run in order"),
    ):
        p = leaf(sub, name, common, run, text)
        p.add_argument("--org", metavar="ORG")
        p.add_argument("--type", metavar="TYPE", help="job type")


def limit_value(text: str) -> int | None:
    """A non-negative count, or ``default`` (back to the global default)."""
    if text == "default":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number or 'default'") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


LIMIT_COLUMNS = (("organization", "organization"), ("job_type", "job type"),
                 ("max_running", "max running"), ("max_queued", "max queued"),
                 ("paused", "paused"))


def run_limits_set(ctx: Context) -> int:
    fields = {k: getattr(ctx.args, k) for k in ("max_running", "max_queued")
              if getattr(ctx.args, k) is not UNSET}
    row = ctx.engine.set_limits(ctx.args.org, job_type=ctx.args.type, **fields)
    if ctx.as_json:
        ctx.emit_json(row)
    else:
        ctx.table(rows_table("limit", LIMIT_COLUMNS, [row]))
    return 0


def run_limits_list(ctx: Context) -> int:
    view = ctx.engine.list_limits()
    if ctx.as_json:
        ctx.emit_json(view)
        return 0
    d = view["defaults"]
    ctx.line(f"defaults: fair claiming {'on' if d['fair_claiming'] else 'off'}, max running "
             f"{d['max_running_per_organization']}, max queued "
             f"{d['max_queued_per_organization']}")
    ctx.line("paused job types: " + (", ".join(view["paused_job_types"]) or "none"))
    ctx.table(rows_table("organization limits", LIMIT_COLUMNS, view["organizations"]))
    return 0


UNSET: Any = object()


@command("limits")
def build_limits(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    limits = group(sub, "limits", "per-organization concurrency limits and quotas")
    leaf(limits, "list", common, run_limits_list, "defaults, overrides and pauses")
    p = leaf(limits, "set", common, run_limits_set,
             "an organization's limits (workers apply them at their next claim)")
    p.add_argument("org", metavar="ORG")
    p.add_argument("--type", metavar="TYPE", help="limit one job type of the organization")
    p.add_argument("--max-running", type=limit_value, default=UNSET, metavar="N|default",
                   help="most jobs running at once (0 pauses)")
    p.add_argument("--max-queued", type=limit_value, default=UNSET, metavar="N|default",
                   help="quota of jobs accepted and not started yet")


def run_operator_metrics(ctx: Context) -> int:
    m = ctx.engine.get_operator_metrics()
    if ctx.as_json:
        ctx.emit_json(m)
        return 0
    ctx.table(rows_table("running by organization",
                         (("organization", "organization"), ("running", "running")),
                         [{"organization": o, "running": n}
                          for o, n in m["running_by_organization"].items()]))
    ctx.table(rows_table("organization limits", LIMIT_COLUMNS, m["organizations"]))
    return 0


@command("operator-metrics")
def build_operator_metrics(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    leaf(sub, "operator-metrics", common, run_operator_metrics,
         "running jobs by organization, limits and pauses (operators)")


# -- long-running processes ------------------------------------------------------


def log_to_stderr() -> None:
    """Long-running commands report what they do; one-shot commands stay quiet."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def run_worker(ctx: Context) -> int:
    from .worker.__main__ import options_from
    from .worker.__main__ import run_worker as run

    log_to_stderr()
    return run(ctx.engine, options_from(ctx.args))


@command("worker")
def build_worker(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    from .worker.__main__ import add_arguments

    p = leaf(sub, "worker", common, run_worker,
             "run a worker supervisor and its child processes until SIGTERM/SIGINT")
    add_arguments(p)


def run_serve(ctx: Context) -> int:
    from .services import serve_all

    if ctx.args.workers < 0:
        raise CommandFailed("validation_error", "--workers must be 0 or more")
    log_to_stderr()
    ctx.engine.migrate()
    serve_all(ctx.engine, host=ctx.args.host, port=ctx.args.port, workers=ctx.args.workers)
    return 0


@command("serve")
def build_serve(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    p = leaf(sub, "serve", common, run_serve,
             "serve the API, dashboard and Socket.IO, with embedded workers and the scheduler")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=2,
                   help="embedded worker processes (0 for an API-only node)")


def run_scheduler(ctx: Context) -> int:
    from .scheduler.__main__ import options_from
    from .scheduler.__main__ import run_scheduler as run

    log_to_stderr()
    return run(ctx.engine, options_from(ctx.args))


@command("scheduler")
def build_scheduler(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    from .scheduler.__main__ import add_arguments

    p = leaf(sub, "scheduler", common, run_scheduler,
             "run the scheduler loop: dependencies, lease rescue, cron schedules, cleanup")
    add_arguments(p)


# -- schedules and cleanup -----------------------------------------------------


def run_schedule_add(ctx: Context) -> int:
    a = ctx.args
    schedule = ctx.engine.schedules.add(
        a.name, cron=a.cron, job_type=a.type, organization=a.org,
        parameters=parse_params(a.params),
    )
    return ctx.created(schedule["name"], schedule)


def run_schedule_list(ctx: Context) -> int:
    items = ctx.engine.schedules.list()
    if ctx.as_json:
        ctx.emit_json({"items": items})
        return 0
    ctx.table(rows_table(
        "schedules",
        [(k, k.replace("_", " ")) for k in ("name", "cron", "job_type", "organization",
                                             "enabled", "last_fired_at", "next_fire_at")],
        items,
    ))
    return 0


def run_schedule_remove(ctx: Context) -> int:
    ctx.engine.schedules.remove(ctx.args.name)
    if ctx.as_json:
        ctx.emit_json({"ok": True, "name": ctx.args.name})
    return 0


@command("schedule")
def build_schedule(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    sched = group(sub, "schedule", "periodic (cron) job schedules")
    p = leaf(sched, "add", common, run_schedule_add, "add a periodic schedule")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--cron", required=True, help="cron expression (UTC)")
    p.add_argument("--type", required=True, help="job type")
    p.add_argument("--org", required=True, help="organization")
    p.add_argument("--params", default=None, help="parameters as a JSON object")
    leaf(sched, "list", common, run_schedule_list, "list schedules")
    p = leaf(sched, "remove", common, run_schedule_remove, "remove a schedule")
    p.add_argument("name", metavar="NAME")


def run_cleanup(ctx: Context) -> int:
    from rich.progress import Progress

    a = ctx.args
    stderr = ctx.console(sys.stderr)
    with Progress(console=stderr, transient=True, disable=ctx.as_json) as bar:
        tasks: dict[str, Any] = {}

        def show(p: Any) -> None:
            if p.phase not in tasks:
                tasks[p.phase] = bar.add_task(f"deleting old {p.phase}", total=p.total or None)
            bar.update(tasks[p.phase], completed=p.done, total=p.total or None)

        result = ctx.engine.cleanup(retention_days=a.retention_days, batch_size=a.batch_size,
                                    dry_run=a.dry_run, progress=show)
    if ctx.as_json:
        ctx.emit_json(result.to_dict())
    elif a.dry_run:
        ctx.line(f"dry run: {result.jobs_matched} job(s) and {result.events_matched} event(s) "
                 "would be deleted")
    else:
        ctx.line(f"deleted {result.jobs_deleted} job(s) and {result.events_deleted} event(s) "
                 f"in {result.batches} batch(es)")
    return 0


@command("cleanup")
def build_cleanup(sub: SubParsers, common: argparse.ArgumentParser) -> None:
    p = leaf(sub, "cleanup", common, run_cleanup,
             "delete terminal jobs older than the retention, in batches")
    p.add_argument("--retention-days", type=float, default=None,
                   help="default: DARTWING_JOBS_RETENTION_DAYS (30)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per transaction (default: DARTWING_JOBS_CLEANUP_BATCH_SIZE)")
    p.add_argument("--dry-run", action="store_true", help="count only, delete nothing")


# -- entry point -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # SUPPRESS: given after the subcommand they win, absent they leave the global value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the HTTP API's JSON shapes")
    common.add_argument("--database-url", default=argparse.SUPPRESS, metavar="URL",
                        help="overrides DARTWING_JOBS_DATABASE_URL")

    parser = argparse.ArgumentParser(
        prog=PROG, description="Operate Dartwing Jobs: a durable background job engine.",
    )
    parser.add_argument("--database-url", default=None, metavar="URL",
                        help="sqlite:///PATH or postgresql://... "
                             "(default: DARTWING_JOBS_DATABASE_URL)")
    parser.add_argument("--json", action="store_true", default=False,
                        help="print the HTTP API's JSON shapes")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for builder in COMMANDS.values():
        builder(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Returns the exit status rather than exiting, so tests run it in-process."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    ctx = Context(args)
    try:
        return int(args.run(ctx))
    except DartwingError as exc:
        return report(exc.code, exc.message, exc.details)
    except CommandFailed as exc:
        return report(exc.code, exc.message)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # no traceback for the operator, ever
        return report("internal", internal_message(exc))
    finally:
        ctx.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
