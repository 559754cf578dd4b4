"""The worker's hot statements on PostgreSQL, as static SQL text.

A claim and a group commit of successes are each one statement and one round
trip: the row updates, their status events and (for successes) the execution-log
rows are written by data-modifying CTEs, and a batch's values travel as one JSON
text read by ``json_to_recordset`` (the client's JSON encoder is C, where
psycopg's array dumper quotes element by element in Python); the few small lists
(job types, notified ids) stay arrays. The text never changes with the batch
size, so the server plans it once per connection and the client never
recompiles it.

Fences are the same as on the generic path: a claim updates only rows it locked
(``FOR UPDATE SKIP LOCKED``) and fences them by the attempt number it read, a
completion only ``(id, attempt)`` still ``running``. Joining by primary key with
a fence on ``attempts`` (in no index) keeps the planner on the primary key even
when the table's statistics lag behind a fast-moving queue.

The claim statements (and the fair walk, which may claim what it locked)
repeat their ``UPDATE`` and status-event ``INSERT`` on purpose: composing SQL
text from pieces is what this project does not do. The status names and the clock
expression are written out; tests/unit/test_hot_statements.py checks them
against the domain (``CLAIMABLE``, ``Status``) and ``clock.db_now``.
"""

from __future__ import annotations

from sqlalchemy import text

#: The first ``:limit`` due jobs by (priority, due time), optionally of some job
#: types; with their status events. (Only claims without fairness, limits or
#: pauses take this path; the fair choice handles those.)
CLAIM_IN_ORDER = text("""
WITH clock AS (
    SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION) AS now
),
chosen AS (
    SELECT id, attempts FROM background_jobs
    WHERE status IN ('queued', 'retrying') AND due_at <= (SELECT now FROM clock)
      AND (CAST(:types AS varchar[]) IS NULL
           OR job_type = ANY(CAST(:types AS varchar[])))
    ORDER BY priority, due_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE background_jobs AS j
    SET status = 'running', attempts = j.attempts + 1, worker_id = :worker_id,
        lease_expires_at = clock.now + :lease, started_at = clock.now,
        modified_at = clock.now, next_retry_at = NULL
    FROM chosen, clock
    WHERE j.id = chosen.id AND j.attempts = chosen.attempts
    RETURNING j.id, j.organization, j.job_type, j.status, j.attempts, j.progress,
        j.progress_message, j.error_type, j.error_message, j.parameters, j.checkpoint,
        j.priority, j.due_at, j.timeout_seconds, clock.now AS claimed_at
),
events AS (
    INSERT INTO job_events (job_id, organization, job_type, kind, status, attempt,
        progress, message, error, created_at)
    SELECT id, organization, job_type, 'status', status, attempts, progress,
        progress_message,
        CASE WHEN error_type IS NULL THEN NULL
             ELSE jsonb_build_object('type', error_type, 'message', error_message) END,
        claimed_at
    FROM claimed
)
SELECT claimed.*, (SELECT pg_notify(:channel, '')) AS notified FROM claimed
""")

#: The jobs a fair choice picked and locked (``:chosen``: a JSON array of
#: ``{"id", "attempts", "tid"}`` as read). Each row is updated where the lock
#: found it (its ``ctid``: a tid scan, not a descent of the primary key); a row
#: this transaction holds cannot have moved, and the id and attempt still fence it.
CLAIM_CHOSEN = text("""
WITH clock AS (
    SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION) AS now
),
chosen AS (
    SELECT * FROM json_to_recordset(CAST(:chosen AS json))
        AS c(id varchar, attempts integer, tid tid)
),
claimed AS (
    UPDATE background_jobs AS j
    SET status = 'running', attempts = j.attempts + 1, worker_id = :worker_id,
        lease_expires_at = clock.now + :lease, started_at = clock.now,
        modified_at = clock.now, next_retry_at = NULL
    FROM chosen, clock
    WHERE j.ctid = chosen.tid AND j.id = chosen.id AND j.attempts = chosen.attempts
    RETURNING j.id, j.organization, j.job_type, j.status, j.attempts, j.progress,
        j.progress_message, j.error_type, j.error_message, j.parameters, j.checkpoint,
        j.priority, j.due_at, j.timeout_seconds, clock.now AS claimed_at
),
events AS (
    INSERT INTO job_events (job_id, organization, job_type, kind, status, attempt,
        progress, message, error, created_at)
    SELECT id, organization, job_type, 'status', status, attempts, progress,
        progress_message,
        CASE WHEN error_type IS NULL THEN NULL
             ELSE jsonb_build_object('type', error_type, 'message', error_message) END,
        claimed_at
    FROM claimed
)
SELECT claimed.*, (SELECT pg_notify(:channel, '')) AS notified FROM claimed
""")

#: Jobs an idle worker was told about (``:ids``, from the submit notifications'
#: payloads), claimed in one statement without the fair walk, and only when they
#: are the only due jobs it could run: then claiming them is what the fair claim
#: would do (a burst of submissions, or anything else waiting, goes to the fair
#: claim). Organizations with a limit or a pause, and paused job types, are left
#: to the fair claim too, which enforces them (read in this statement, as there).
CLAIM_NOTIFIED = text("""
WITH clock AS (
    SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION) AS now
),
chosen AS (
    SELECT j.id, j.attempts FROM background_jobs AS j
    WHERE j.id = ANY(CAST(:ids AS varchar[]))
      AND j.status IN ('queued', 'retrying') AND j.due_at <= (SELECT now FROM clock)
      AND (CAST(:types AS varchar[]) IS NULL
           OR j.job_type = ANY(CAST(:types AS varchar[])))
      AND NOT EXISTS (
          SELECT 1 FROM organization_limits AS l
          WHERE l.organization = j.organization
            AND (l.paused OR l.max_running IS NOT NULL))
      AND NOT EXISTS (
          SELECT 1 FROM paused_job_types AS p WHERE p.job_type = j.job_type)
      AND NOT EXISTS (
          SELECT 1 FROM background_jobs AS o
          WHERE o.status IN ('queued', 'retrying') AND o.due_at <= (SELECT now FROM clock)
            AND NOT (o.id = ANY(CAST(:ids AS varchar[])))
            AND (CAST(:types AS varchar[]) IS NULL
                 OR o.job_type = ANY(CAST(:types AS varchar[]))))
    FOR UPDATE OF j SKIP LOCKED
),
claimed AS (
    UPDATE background_jobs AS j
    SET status = 'running', attempts = j.attempts + 1, worker_id = :worker_id,
        lease_expires_at = clock.now + :lease, started_at = clock.now,
        modified_at = clock.now, next_retry_at = NULL
    FROM chosen, clock
    WHERE j.id = chosen.id AND j.attempts = chosen.attempts
    RETURNING j.id, j.organization, j.job_type, j.status, j.attempts, j.progress,
        j.progress_message, j.error_type, j.error_message, j.parameters, j.checkpoint,
        j.priority, j.due_at, j.timeout_seconds, clock.now AS claimed_at
),
events AS (
    INSERT INTO job_events (job_id, organization, job_type, kind, status, attempt,
        progress, message, error, created_at)
    SELECT id, organization, job_type, 'status', status, attempts, progress,
        progress_message,
        CASE WHEN error_type IS NULL THEN NULL
             ELSE jsonb_build_object('type', error_type, 'message', error_message) END,
        claimed_at
    FROM claimed
)
SELECT claimed.*, (SELECT pg_notify(:channel, '')) AS notified FROM claimed
""")

#: Successful attempts (``:batch``: a JSON array of objects, each result as JSON
#: text): the rows, their execution-log rows and status events.
COMPLETE_MANY = text("""
WITH clock AS (
    SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION) AS now
),
done_in AS (
    SELECT id, attempt, CAST(result AS jsonb) AS result, worker_id, started_at, duration_ms
    FROM json_to_recordset(CAST(:batch AS json)) AS d(
        id varchar, attempt integer, result text, worker_id varchar,
        started_at double precision, duration_ms double precision)
),
done AS (
    UPDATE background_jobs AS j
    SET status = 'completed', result = d.result, progress = 100.0,
        completed_at = clock.now, modified_at = clock.now, lease_expires_at = NULL,
        error_type = NULL, error_message = NULL, error_traceback = NULL
    FROM done_in AS d, clock
    WHERE j.id = d.id AND j.attempts = d.attempt AND j.status = 'running'
    RETURNING j.id, j.organization, j.job_type, j.status, j.attempts, j.progress,
        j.progress_message, clock.now AS completed_at, d.worker_id AS log_worker,
        d.started_at AS log_started, d.duration_ms AS log_duration
),
logged AS (
    INSERT INTO job_execution_log (job_id, organization, job_type, attempt, worker_id,
        started_at, finished_at, duration_ms, outcome)
    SELECT id, organization, job_type, attempts, log_worker, log_started,
        log_started + log_duration / 1000.0, log_duration, 'completed'
    FROM done
),
events AS (
    INSERT INTO job_events (job_id, organization, job_type, kind, status, attempt,
        progress, message, error, created_at)
    SELECT id, organization, job_type, 'status', status, attempts, progress,
        progress_message, NULL, completed_at
    FROM done
)
SELECT done.id, (SELECT pg_notify(:channel, '')) AS notified FROM done
""")

#: Which of the attempts in ``:held`` (a JSON array of ``{"id", "attempts"}``)
#: were asked to stop. The supervisor's heartbeat asks this several times a
#: second for every job it holds, hundreds when short jobs are prefetched: one
#: text whatever their number.
CANCEL_REQUESTS = text("""
SELECT j.id, j.attempts
FROM json_to_recordset(CAST(:held AS json)) AS h(id varchar, attempts integer)
JOIN background_jobs AS j ON j.id = h.id AND j.attempts = h.attempts
WHERE j.cancel_requested AND j.status = 'running'
""")

#: Which of ``:ids`` (a JSON array) other jobs depend on.
HAVING_DEPENDENTS = text("""
SELECT DISTINCT depends_on_id FROM job_dependencies
WHERE depends_on_id IN (SELECT json_array_elements_text(CAST(:ids AS json)))
""")

#: A fair claim's walk over the organizations with claimable jobs, in name order
#: after ``:after``, wrapping around to the start and back to ``:after`` itself
#: (one statement where a walk that reached the end used to take two), at most
#: ``:steps`` organizations; each with its first due job at ``:priority`` by due
#: time, locked (``FOR UPDATE SKIP LOCKED``), when it has one that is not held.
#:
#: Each step is one probe of ``ix_background_jobs_org_claimable``: the first
#: claimable row after the previous organization in (organization, priority, due
#: time) order names the next organization and, when it is due, at ``:priority``
#: and of a wanted job type, is that organization's head, locked through its
#: ``ctid`` with no second index descent (``fast``; a row updated and committed
#: meanwhile is rechecked at its newest version, whose ``ctid`` differs, so
#: ``fast`` skips it and ``slow`` finds it). Otherwise (a more urgent job not due yet,
#: a filtered job type, the row held by another claimer) ``slow`` asks the index
#: for the head as the walk used to. A step's row is read from the heap (its
#: ``ctid``), so the probe marks the entries of jobs claimed since as dead, where
#: an index-only scan would visit each of them again until the next vacuum.
#: ``:types`` (NULL: all) and ``:paused`` (may be empty) filter the heads only:
#: an organization with claimable jobs of other types is still a step. The walk
#: also stops once ``:enough`` steps had a probe row that is a due head (``found``
#: counts them): a claim of ``k`` jobs from ``k`` organizations locks ``k`` heads,
#: not the slack its step bound keeps for organizations with nothing due.
#:
#: With ``:claim_want`` > 0 (no limits, no paused organization: the fair choice
#: would take the first ``:claim_want`` heads in rotation order, one job from each
#: of as many organizations) and at least that many heads locked, the statement
#: also claims those first ``:claim_want`` (``heads``; more may be locked, as
#: ``slow`` finds heads behind probe rows that ``found`` does not count) for
#: ``:worker_id`` with ``:lease``, writes their status events and notifies
#: ``:channel``; their claimed columns come back on their steps' rows (``status``
#: set). The update reads the statement's snapshot: a head that ``slow`` locked at
#: a version committed after it (a recheck) is not claimed here, and comes back
#: locked for the caller's ``CLAIM_CHOSEN``. ``:claim_want`` 0: the walk only
#: looks and locks.
WALK_AROUND = text("""
WITH RECURSIVE clock AS (
    SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION) AS now
),
walk(org, n, wrapped, priority, due_at, job_type, tid, found) AS (
    SELECT f.organization, 1, f.wrapped, f.priority, f.due_at, f.job_type, f.ctid,
        CASE WHEN f.priority = :priority AND f.due_at <= (SELECT now FROM clock)
                  AND (CAST(:types AS varchar[]) IS NULL
                       OR f.job_type = ANY(CAST(:types AS varchar[])))
                  AND f.job_type <> ALL(CAST(:paused AS varchar[]))
             THEN 1 ELSE 0 END
    FROM (
        (SELECT organization, priority, due_at, job_type, ctid, false AS wrapped
         FROM background_jobs
         WHERE status IN ('queued', 'retrying') AND organization > :after
         ORDER BY organization, priority, due_at LIMIT 1)
        UNION ALL
        (SELECT organization, priority, due_at, job_type, ctid, true
         FROM background_jobs
         WHERE :after <> '' AND status IN ('queued', 'retrying')
         ORDER BY organization, priority, due_at LIMIT 1)
        LIMIT 1
    ) AS f
    UNION ALL
    SELECT f.organization, w.n + 1, f.wrapped, f.priority, f.due_at, f.job_type, f.ctid,
        w.found + CASE WHEN f.priority = :priority AND f.due_at <= (SELECT now FROM clock)
                            AND (CAST(:types AS varchar[]) IS NULL
                                 OR f.job_type = ANY(CAST(:types AS varchar[])))
                            AND f.job_type <> ALL(CAST(:paused AS varchar[]))
                       THEN 1 ELSE 0 END
    FROM walk AS w CROSS JOIN LATERAL (
        (SELECT organization, priority, due_at, job_type, ctid, w.wrapped AS wrapped
         FROM background_jobs
         WHERE status IN ('queued', 'retrying') AND organization > w.org
         ORDER BY organization, priority, due_at LIMIT 1)
        UNION ALL
        (SELECT organization, priority, due_at, job_type, ctid, true
         FROM background_jobs
         WHERE NOT w.wrapped AND :after <> '' AND status IN ('queued', 'retrying')
         ORDER BY organization, priority, due_at LIMIT 1)
        LIMIT 1
    ) AS f
    WHERE w.n < :steps AND w.found < :enough AND NOT (w.wrapped AND w.org >= :after)
),
steps AS (
    SELECT w.n, w.org, w.found, COALESCE(fast.id, slow.id) AS id,
        COALESCE(fast.job_type, slow.job_type) AS job_type,
        COALESCE(fast.due_at, slow.due_at) AS due_at,
        COALESCE(fast.attempts, slow.attempts) AS attempts,
        COALESCE(fast.tid, slow.tid) AS tid
    FROM walk AS w
    LEFT JOIN LATERAL (
        SELECT j.id, j.job_type, j.due_at, j.attempts, j.ctid AS tid
        FROM background_jobs AS j
        WHERE w.priority = :priority AND w.due_at <= (SELECT now FROM clock)
          AND (CAST(:types AS varchar[]) IS NULL
               OR w.job_type = ANY(CAST(:types AS varchar[])))
          AND w.job_type <> ALL(CAST(:paused AS varchar[]))
          AND j.ctid = w.tid AND j.organization = w.org AND j.priority = :priority
          AND j.status IN ('queued', 'retrying') AND j.due_at <= (SELECT now FROM clock)
        FOR UPDATE SKIP LOCKED
    ) AS fast ON true
    LEFT JOIN LATERAL (
        SELECT d.id, d.job_type, d.due_at, d.attempts, d.ctid AS tid
        FROM background_jobs AS d
        WHERE fast.id IS NULL AND w.priority <= :priority
          AND d.organization = w.org AND d.priority = :priority
          AND d.status IN ('queued', 'retrying') AND d.due_at <= (SELECT now FROM clock)
          AND (CAST(:types AS varchar[]) IS NULL
               OR d.job_type = ANY(CAST(:types AS varchar[])))
          AND d.job_type <> ALL(CAST(:paused AS varchar[]))
        ORDER BY d.due_at
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ) AS slow ON true
    WHERE NOT (w.wrapped AND w.org > :after)
),
heads AS (
    SELECT id, attempts, tid FROM steps WHERE id IS NOT NULL ORDER BY n LIMIT :claim_want
),
claimed AS (
    UPDATE background_jobs AS j
    SET status = 'running', attempts = j.attempts + 1, worker_id = :worker_id,
        lease_expires_at = clock.now + :lease, started_at = clock.now,
        modified_at = clock.now, next_retry_at = NULL
    FROM heads AS s, clock
    WHERE :claim_want > 0 AND (SELECT count(*) FROM heads) = :claim_want
      AND j.ctid = s.tid AND j.id = s.id AND j.attempts = s.attempts
    RETURNING j.id, j.organization, j.job_type, j.status, j.attempts, j.progress,
        j.progress_message, j.error_type, j.error_message, j.parameters, j.checkpoint,
        j.priority, j.due_at, j.timeout_seconds, clock.now AS claimed_at
),
events AS (
    INSERT INTO job_events (job_id, organization, job_type, kind, status, attempt,
        progress, message, error, created_at)
    SELECT id, organization, job_type, 'status', status, attempts, progress,
        progress_message,
        CASE WHEN error_type IS NULL THEN NULL
             ELSE jsonb_build_object('type', error_type, 'message', error_message) END,
        claimed_at
    FROM claimed
)
SELECT s.org, s.found, s.id IS NOT NULL AS has_due, s.id, s.org AS organization,
    s.job_type, s.due_at, COALESCE(c.attempts, s.attempts) AS attempts, s.tid,
    c.status, c.progress, c.progress_message, c.error_type, c.error_message,
    c.parameters, c.checkpoint, c.priority, c.timeout_seconds, c.claimed_at,
    CASE WHEN c.id IS NOT NULL THEN (SELECT pg_notify(:channel, '')) END AS notified
FROM steps AS s LEFT JOIN claimed AS c ON c.id = s.id
ORDER BY s.n
""")
