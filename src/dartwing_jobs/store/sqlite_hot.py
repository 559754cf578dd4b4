"""The worker's hot statements on SQLite, as static SQL text.

A claim or a group commit of successes is one set-based ``UPDATE ... RETURNING``
whose values arrive as one JSON array parameter (read with ``json_each``), so its
text never changes with the batch size: SQLite prepares it once per connection
and SQLAlchemy never recompiles it. The write transaction (``BEGIN IMMEDIATE``)
serialises writers, so the status fences in the ``WHERE`` clauses are exact.
A unary ``+`` keeps SQLite's planner off the status indexes for those fences: it
must find the batch's rows by primary key, not scan every running or queued job.

The claim statements repeat their ``UPDATE`` on purpose: composing SQL text
from pieces is what this project does not do. The status names and the clock
expression are written out; tests/unit/test_hot_statements.py checks them
against the domain and ``clock.db_now``.
"""

from __future__ import annotations

from sqlalchemy import text

#: The first ``:limit`` due jobs by (priority, due time): the claim index's own
#: predicate and order, so that index serves it without a sort.
CLAIM_IN_ORDER = text("""
UPDATE background_jobs
SET status = 'running', attempts = attempts + 1, worker_id = :worker_id,
    lease_expires_at = ((julianday('now') - 2440587.5) * 86400.0) + :lease,
    started_at = ((julianday('now') - 2440587.5) * 86400.0),
    modified_at = ((julianday('now') - 2440587.5) * 86400.0),
    next_retry_at = NULL
WHERE id IN (
    SELECT id FROM background_jobs INDEXED BY ix_background_jobs_claim
    WHERE status IN ('queued', 'retrying')
      AND due_at <= ((julianday('now') - 2440587.5) * 86400.0)
    ORDER BY priority, due_at
    LIMIT :limit
)
RETURNING id, organization, job_type, status, attempts, progress, progress_message,
    error_type, error_message, parameters, checkpoint, priority, due_at, timeout_seconds
""")

#: The same, only of the job types in the JSON array ``:types``.
CLAIM_IN_ORDER_OF_TYPES = text("""
UPDATE background_jobs
SET status = 'running', attempts = attempts + 1, worker_id = :worker_id,
    lease_expires_at = ((julianday('now') - 2440587.5) * 86400.0) + :lease,
    started_at = ((julianday('now') - 2440587.5) * 86400.0),
    modified_at = ((julianday('now') - 2440587.5) * 86400.0),
    next_retry_at = NULL
WHERE id IN (
    SELECT id FROM background_jobs INDEXED BY ix_background_jobs_claim
    WHERE status IN ('queued', 'retrying')
      AND due_at <= ((julianday('now') - 2440587.5) * 86400.0)
      AND job_type IN (SELECT value FROM json_each(:types))
    ORDER BY priority, due_at
    LIMIT :limit
)
RETURNING id, organization, job_type, status, attempts, progress, progress_message,
    error_type, error_message, parameters, checkpoint, priority, due_at, timeout_seconds
""")

#: The jobs a fair choice picked (JSON array ``:ids``), if still claimable.
CLAIM_CHOSEN = text("""
UPDATE background_jobs
SET status = 'running', attempts = attempts + 1, worker_id = :worker_id,
    lease_expires_at = ((julianday('now') - 2440587.5) * 86400.0) + :lease,
    started_at = ((julianday('now') - 2440587.5) * 86400.0),
    modified_at = ((julianday('now') - 2440587.5) * 86400.0),
    next_retry_at = NULL
WHERE id IN (SELECT value FROM json_each(:ids))
  AND +status IN ('queued', 'retrying')
RETURNING id, organization, job_type, status, attempts, progress, progress_message,
    error_type, error_message, parameters, checkpoint, priority, due_at, timeout_seconds
""")

#: Successful attempts, ``:batch`` a JSON array of ``[id, attempt, result]``.
COMPLETE_MANY = text("""
UPDATE background_jobs
SET status = 'completed', result = done.result, progress = 100.0,
    completed_at = ((julianday('now') - 2440587.5) * 86400.0),
    modified_at = ((julianday('now') - 2440587.5) * 86400.0),
    lease_expires_at = NULL, error_type = NULL, error_message = NULL,
    error_traceback = NULL
FROM (
    SELECT value ->> '$[0]' AS id, value ->> '$[1]' AS attempt, value -> '$[2]' AS result
    FROM json_each(:batch)
) AS done
WHERE background_jobs.id = done.id AND background_jobs.attempts = done.attempt
  AND +background_jobs.status = 'running'
RETURNING background_jobs.id, background_jobs.attempts
""")

#: Which of the attempts in the JSON array ``:held`` (``[[id, attempt], ...]``)
#: were asked to stop (asked by the supervisor's heartbeat several times a second
#: for every job it holds: one text whatever their number).
CANCEL_REQUESTS = text("""
SELECT j.id, j.attempts
FROM json_each(:held) AS h
JOIN background_jobs AS j
  ON j.id = json_extract(h.value, '$[0]') AND j.attempts = json_extract(h.value, '$[1]')
WHERE j.cancel_requested AND +j.status = 'running'
""")

#: Which of the JSON array ``:ids`` other jobs depend on.
HAVING_DEPENDENTS = text("""
SELECT DISTINCT depends_on_id FROM job_dependencies
WHERE depends_on_id IN (SELECT value FROM json_each(:ids))
""")

#: The status event of each job in the JSON array ``:ids``, as its row stands
#: (``Store.status_event`` builds the same from a row in Python).
STATUS_EVENTS = text("""
INSERT INTO job_events (job_id, organization, job_type, kind, status, attempt, progress,
    message, error, created_at)
SELECT id, organization, job_type, 'status', status, attempts, progress, progress_message,
    CASE WHEN error_type IS NULL THEN NULL
         ELSE json_object('type', error_type, 'message', error_message) END,
    ((julianday('now') - 2440587.5) * 86400.0)
FROM background_jobs
WHERE id IN (SELECT value FROM json_each(:ids))
""")

#: The execution-log rows of successful attempts, ``:batch`` a JSON array of
#: ``[id, worker id, started at, duration in ms]`` of the attempts just completed.
COMPLETED_LOG = text("""
INSERT INTO job_execution_log (job_id, organization, job_type, attempt, worker_id,
    started_at, finished_at, duration_ms, outcome)
SELECT j.id, j.organization, j.job_type, j.attempts, d.value ->> '$[1]',
    d.value ->> '$[2]', (d.value ->> '$[2]') + (d.value ->> '$[3]') / 1000.0,
    d.value ->> '$[3]', 'completed'
FROM json_each(:batch) AS d
JOIN background_jobs AS j ON j.id = d.value ->> '$[0]'
""")
