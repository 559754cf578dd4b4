"""Fair claiming between organizations (issue 10).

One claim, inside its transaction, with a bounded number of statements:

1. the priorities with a due job (the claim index, one probe per level, one
   statement);
2. a bounded skip scan over ``ix_background_jobs_org_claimable`` naming the
   organizations with claimable jobs in name order, starting after the
   organization this worker served last and wrapping around, each flagged with
   whether it has a due job at that priority (one index probe per step; on
   PostgreSQL one statement, wrap-around included, whose probe row is the
   organization's head whenever it is due at that priority, locked through its
   ``ctid``: ``postgres_hot.WALK_AROUND``);
3. for organizations with a concurrency limit: their ``organizations`` rows are
   locked (PostgreSQL: ``FOR NO KEY UPDATE SKIP LOCKED``, so two claimers never
   count the same organization at once, and neither blocks submissions) and their
   running jobs counted, giving each a budget for this claim;
4. each chosen organization's first ``k`` due jobs at that priority by due time
   (PostgreSQL: a ``LATERAL`` per organization with ``FOR UPDATE SKIP LOCKED``;
   SQLite: ``UNION ALL`` of LIMITed ranges) - at most about ``limit`` rows. On
   PostgreSQL a fresh walk has already locked each organization's first due job
   in step 2; when the claim takes one job per organization (as many
   organizations as wanted jobs, the multi-tenant case) those are the jobs, and
   this step's statement is not sent;
5. the jobs are interleaved round robin (rank inside its organization, then
   rotation order) and the first ``limit`` are claimed by the caller's UPDATE.
   On PostgreSQL, with no limits and no paused organizations, a walk that locked
   as many heads as the claim wants claims the first that many, in rotation
   order, in its own statement (what steps 4 and 5 would choose then): the
   multi-tenant claim then sends no statement after the walk (unless a head was
   updated after the walk's snapshot: the caller's UPDATE claims that one).

If the top priority cannot fill the claim, the next priority follows; a ready
``critical`` job therefore always goes before any ``high`` one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from sqlalchemy.engine import Connection, RowMapping

from .controls import Controls, running_counts

if TYPE_CHECKING:
    from .base import Store


class WalkClaim(NamedTuple):
    """Asks a walk to claim the first ``want`` heads it locks, in rotation order,
    if it locks at least that many: then they are what the choice would take (no
    limits, no paused organizations, one job from each of ``want``
    organizations), and claiming them in the walk's own statement saves the
    claim's round trip."""

    worker_id: str
    lease_seconds: float
    want: int


#: Upper bound of skip-scan steps in one walk, whatever the claim size.
MAX_STEPS = 1000
#: Fetch rounds per priority level (a second round tops up from organizations
#: that had more jobs than their first share).
ROUNDS = 2


class FairChoice:
    """Chooses the jobs of one claim; lives for one claim only."""

    def __init__(self, store: Store, conn: Connection, controls: Controls,
                 job_type_filter: Sequence[str] | None,
                 claim_as: tuple[str, float] | None = None) -> None:
        self.store = store
        self.conn = conn
        self.controls = controls
        self.policy = store.claim_policy
        self.job_type_filter = job_type_filter
        self.blocked: set[str] = set(controls.paused_orgs)
        self.checked: set[str] = set()
        self.org_budget: dict[str, int] = {}
        self.type_budget: dict[tuple[str, str], int] = {}
        #: The attempt number each fetched job had when it was read (the claim's
        #: fence), and where its locked row is (``tid``; None where rows have no
        #: address the claim can use).
        self.fences: dict[str, tuple[int, str | None]] = {}
        #: Each organization's first due job, locked by the last walk (if it did).
        self.walk_heads: dict[str, RowMapping] = {}
        #: (worker id, lease) the walks may claim for (None: they only look).
        self.claim_as = claim_as
        #: Jobs a walk claimed itself, by id (the caller claims only the others).
        self.claimed: dict[str, RowMapping] = {}
        self.walk_claimed: Sequence[RowMapping] = ()

    def choose(self, limit: int, cursor: str) -> tuple[list[str], str]:
        """Job ids in start order, and the new rotation cursor."""
        chosen: list[str] = []
        for priority in self.store.due_priorities(
                self.conn, self.job_type_filter, self.controls.paused_types):
            if len(chosen) >= limit:
                break
            picked, cursor = self._level(priority, limit - len(chosen), cursor)
            chosen += picked
        return chosen, cursor

    # -- one priority level ----------------------------------------------------

    def _organizations(self, priority: int, want: int, cursor: str
                       ) -> tuple[list[str], str | None]:
        """Organizations with a due job at ``priority`` that may start jobs now, in
        rotation order after ``cursor``; and the last organization looked at."""
        steps = min(MAX_STEPS, want * self.policy.scan_factor + len(self.blocked) + 8)
        # Without limits, only paused organizations are passed over after the
        # walk: it may stop once it has found that many due heads more than wanted.
        enough = None if self.controls.limited(self.policy) else want + len(self.blocked)
        claim = None
        if self.claim_as is not None and enough == want:  # no limits, nothing blocked
            claim = WalkClaim(*self.claim_as, want)
        walk = self.store.walk_around(self.conn, priority, cursor, steps,
                                      self.job_type_filter, self.controls.paused_types,
                                      enough, claim)
        walked, self.walk_heads, self.walk_claimed = walk.steps, walk.heads, walk.claimed
        last = walked[-1][0] if walked else None
        orgs = [o for o, due in walked if due and o not in self.blocked]
        if not self.controls.limited(self.policy):  # paused ones are blocked already
            return orgs[:want], last
        unchecked = [o for o in orgs if o not in self.checked and (
            self.controls.org_limit(o, self.policy) is not None
            or self.controls.limited_types(o))]
        if unchecked:
            self._check_limits(unchecked)
            orgs = [o for o in orgs if o not in self.blocked]
        return orgs[:want], last

    def _check_limits(self, names: list[str]) -> None:
        locked = self.store.lock_organizations(self.conn, names)
        counts = running_counts(self.conn, sorted(locked))
        for org in names:
            self.checked.add(org)
            if org not in locked:  # another claimer is counting it right now
                self.blocked.add(org)
                continue
            limit = self.controls.org_limit(org, self.policy)
            if limit is not None:
                running = sum(n for (o, _), n in counts.items() if o == org)
                self.org_budget[org] = limit - running
                if limit - running <= 0:
                    self.blocked.add(org)
            for job_type, type_limit in self.controls.limited_types(org).items():
                self.type_budget[(org, job_type)] = type_limit - counts.get((org, job_type), 0)

    def _level(self, priority: int, want: int, cursor: str) -> tuple[list[str], str]:
        orgs, last_seen = self._organizations(priority, want, cursor)
        if self.walk_claimed:
            # The walk claimed the heads of the first ``want`` organizations, save
            # any it locked at a version its statement could not update (the
            # caller's claim takes those).
            self.claimed.update((r["id"], r) for r in self.walk_claimed)
            heads = [self.walk_heads[o] for o in orgs]
            self.fences.update((h["id"], (h["attempts"], h["tid"])) for h in heads
                               if h["id"] not in self.claimed)
            return [h["id"] for h in heads], orgs[-1]
        picked: list[str] = []
        fetched: list[str] = []
        last_served: str | None = None
        active = orgs
        for _ in range(ROUNDS):
            if not active or len(picked) >= want:
                break
            share = math.ceil((want - len(picked)) / len(active))
            wanted = [(o, min(share, self.org_budget.get(o, share))) for o in active]
            wanted = [(o, k) for o, k in wanted if k > 0]
            if not wanted:
                break
            blocked_pairs = sorted(pair for pair, n in self.type_budget.items()
                                   if n <= 0 and pair[0] in active)
            if (not fetched and not blocked_pairs
                    and all(k == 1 and o in self.walk_heads for o, k in wanted)):
                # One job per organization: the walk has locked exactly those.
                rows = [self.walk_heads[o] for o, _ in wanted]
            else:
                rows = self.store.organization_heads(
                    self.conn, priority, wanted, self.job_type_filter,
                    self.controls.paused_types, blocked_pairs, fetched)
            fetched += [r["id"] for r in rows]
            self.fences.update((r["id"], (r["attempts"], r.get("tid"))) for r in rows)
            taken, served = self._interleave(rows, [o for o, _ in wanted], want - len(picked))
            picked += taken
            last_served = served or last_served
            returned: dict[str, int] = {}
            for r in rows:
                returned[r["organization"]] = returned.get(r["organization"], 0) + 1
            # Organizations that had at least their share may have more.
            active = [o for o, k in wanted
                      if returned.get(o, 0) >= k and self.org_budget.get(o, 1) > 0]
        return picked, last_served or last_seen or cursor

    def _interleave(self, rows: Sequence[RowMapping], rotation: list[str], want: int
                    ) -> tuple[list[str], str | None]:
        """Round robin: every organization's first job in rotation order, then every
        second job, ...; budgets of limited organizations and job types respected."""
        position = {o: i for i, o in enumerate(rotation)}
        by_org: dict[str, list[RowMapping]] = {}
        for row in rows:
            by_org.setdefault(row["organization"], []).append(row)
        ranked: list[tuple[int, int, RowMapping]] = []
        for org, own in by_org.items():
            own.sort(key=lambda r: (r["due_at"], r["id"]))
            ranked += [(rank, position[org], r) for rank, r in enumerate(own)]
        ranked.sort(key=lambda t: (t[0], t[1]))
        taken: list[str] = []
        served: str | None = None
        for _, _, row in ranked:
            if len(taken) >= want:
                break
            org, pair = row["organization"], (row["organization"], row["job_type"])
            if self.org_budget.get(org, 1) <= 0 or self.type_budget.get(pair, 1) <= 0:
                continue
            taken.append(row["id"])
            served = org
            if org in self.org_budget:
                self.org_budget[org] -= 1
            if pair in self.type_budget:
                self.type_budget[pair] -= 1
        return taken, served
