"""Fair order of the queued jobs: who runs next, every job's position, and the work ahead of it.

The order, from first to last:

1. *Retries*: jobs that had started (``attempts > 0``) and were put back because their worker
   died. They go to the front, oldest first, so a crash never costs a member their place.
2. *Priority classes*, highest first (``Job.priority``, set by the bot from the member's roles).
3. Inside a class, *round-robin across members*: every member with a waiting job gets one turn
   before anyone gets a second. The rotation is ordered by each member's *turn key*,
   ``max(when they were last served, when their oldest waiting job arrived)``: being served
   sends a member to the back of the rotation; a member who arrives joins at the back.
   Each member's own jobs run in the order they were asked for.

So with the rotation ``u1, u2, …`` the class runs ``u1[0], u2[0], …, u1[1], u2[1], …``. That
closed form lets :meth:`FairOrder.position` and :meth:`FairOrder.work_ahead` answer in
O(members) with no materialised list, which is what keeps position and ETA cheap with ten
thousand jobs waiting. "Last served" lives in memory: after a restart the rotation starts again
from each member's oldest waiting job, which is still fair.

This module is pure bookkeeping (no I/O, no clock of its own); :mod:`bot.core.queue` drives it.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field

from bot.core.jobs import Job

log = logging.getLogger(__name__)

#: estimated GPU seconds of a job (the cost model's ``estimate``)
CostFn = Callable[[Job], float]

_seq = itertools.count()


@dataclass(slots=True)
class _Lane:
    """One member's waiting jobs in one priority class, in arrival order, with running cost sums."""

    keys: list[tuple[float, int]] = field(default_factory=list)  # (arrival ts, tie-break seq)
    jobs: list[Job] = field(default_factory=list)
    prefix: list[float] = field(default_factory=lambda: [0.0])  # prefix[i] = cost of jobs[:i]

    def insert(self, key: tuple[float, int], job: Job, cost: float) -> None:
        i = bisect.bisect_right(self.keys, key)
        self.keys.insert(i, key)
        self.jobs.insert(i, job)
        self.prefix.insert(i + 1, self.prefix[i] + cost)
        for j in range(i + 2, len(self.prefix)):
            self.prefix[j] += cost

    def remove_at(self, i: int) -> Job:
        cost = self.prefix[i + 1] - self.prefix[i]
        del self.keys[i]
        job = self.jobs.pop(i)
        del self.prefix[i + 1]
        for j in range(i + 1, len(self.prefix)):
            self.prefix[j] -= cost
        return job

    def index_of(self, job_id: str) -> int:
        for i, job in enumerate(self.jobs):
            if job.id == job_id:
                return i
        raise KeyError(job_id)

    def cost_at(self, i: int) -> float:
        return self.prefix[i + 1] - self.prefix[i]

    def __len__(self) -> int:
        return len(self.jobs)


@dataclass(slots=True)
class _Where:
    priority: int | None  # None: the retry lane
    user_id: str
    key: tuple[float, int]


class FairOrder:
    """The queued jobs (not the running ones) in fair order; see the module docstring.

    `cost` estimates a job's GPU seconds; it is read when a job is added and again by
    :meth:`refresh_costs` after the cost model has learned something new.
    """

    def __init__(self, *, cost: CostFn) -> None:
        self._cost = cost
        self._retry = _Lane()
        self._classes: dict[int, dict[str, _Lane]] = {}
        self._where: dict[str, _Where] = {}
        self._last_served: dict[str, float] = {}
        self._per_user: dict[str, int] = {}

    # -- membership -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._where

    def get(self, job_id: str) -> Job | None:
        where = self._where.get(job_id)
        if where is None:
            return None
        lane = self._lane(where)
        return lane.jobs[lane.index_of(job_id)]

    def count_for_user(self, user_id: str) -> int:
        """Queue units (images) the member has waiting."""
        return self._per_user.get(user_id, 0)

    def jobs_for_user(self, user_id: str) -> list[Job]:
        out = [j for j in self._retry.jobs if j.user_id == user_id]
        for users in self._classes.values():
            lane = users.get(user_id)
            if lane is not None:
                out.extend(lane.jobs)
        return out

    def users(self) -> int:
        return len(self._per_user)

    def add(self, job: Job) -> None:
        """Queue `job` (a retry if it has started before); adding a job twice is an error."""
        if job.id in self._where:
            raise ValueError(f"job {job.id} is already queued")
        key = (job.created_at.timestamp(), next(_seq))
        if job.attempts > 0:
            where = _Where(priority=None, user_id=job.user_id, key=key)
            self._retry.insert(key, job, self._cost(job))
        else:
            where = _Where(priority=job.priority, user_id=job.user_id, key=key)
            users = self._classes.setdefault(job.priority, {})
            lane = users.get(job.user_id)
            if lane is None:
                lane = users[job.user_id] = _Lane()
            lane.insert(key, job, self._cost(job))
        self._where[job.id] = where
        self._per_user[job.user_id] = self._per_user.get(job.user_id, 0) + job.units

    def remove(self, job_id: str) -> Job | None:
        """Take a job out (cancelled, claimed); None if it was not queued."""
        where = self._where.pop(job_id, None)
        if where is None:
            return None
        lane = self._lane(where)
        job = lane.remove_at(lane.index_of(job_id))
        if where.priority is not None and not lane:
            users = self._classes[where.priority]
            del users[where.user_id]
            if not users:
                del self._classes[where.priority]
        left = self._per_user[job.user_id] - job.units
        if left > 0:
            self._per_user[job.user_id] = left
        else:
            del self._per_user[job.user_id]
        return job

    # -- serving ------------------------------------------------------------------------------

    def peek(self) -> Job | None:
        """The job that runs next."""
        if self._retry.jobs:
            return self._retry.jobs[0]
        if not self._classes:
            return None
        users = self._classes[max(self._classes)]
        user = min(users, key=lambda u: self._turn_key(u, users[u]))
        return users[user].jobs[0]

    def pop(self) -> Job | None:
        """Remove and return the job that runs next (then call :meth:`served`)."""
        job = self.peek()
        if job is not None:
            self.remove(job.id)
        return job

    def served(self, user_id: str, at: float) -> float | None:
        """Record that `user_id` got a turn at `at` (a timestamp): back of the rotation.

        Call it right after :meth:`pop`, before any await, so no one ever sees the member's
        next job with the old turn. Returns the previous value for :meth:`restore_served`.
        """
        previous = self._last_served.get(user_id)
        self._last_served[user_id] = max(at, previous if previous is not None else -math.inf)
        return previous

    def restore_served(self, user_id: str, previous: float | None) -> None:
        """Undo :meth:`served` (the job could not start after all)."""
        if previous is None:
            self._last_served.pop(user_id, None)
        else:
            self._last_served[user_id] = previous

    def forget_idle_users(self) -> None:
        """Drop "last served" of members with nothing waiting (their arrival time decides anyway)."""
        for user in [u for u in self._last_served if u not in self._per_user]:
            del self._last_served[user]

    # -- positions and work ahead -------------------------------------------------------------

    def position(self, job_id: str) -> int | None:
        """1 for the next job to run, 2 for the one after, …; None if not queued."""
        ahead = self._ahead(job_id)
        return None if ahead is None else ahead[0] + 1

    def work_ahead(self, job_id: str) -> float | None:
        """Estimated GPU seconds of the queued jobs that run before `job_id`."""
        ahead = self._ahead(job_id)
        return None if ahead is None else ahead[1]

    def cost_of(self, job_id: str) -> float | None:
        where = self._where.get(job_id)
        if where is None:
            return None
        lane = self._lane(where)
        return lane.cost_at(lane.index_of(job_id))

    def _ahead(self, job_id: str) -> tuple[int, float] | None:
        where = self._where.get(job_id)
        if where is None:
            return None
        lane = self._lane(where)
        r = lane.index_of(job_id)
        if where.priority is None:
            return r, lane.prefix[r]
        count = len(self._retry)
        work = self._retry.prefix[-1]
        for priority, users in self._classes.items():
            if priority > where.priority:
                for other in users.values():
                    count += len(other)
                    work += other.prefix[-1]
        users = self._classes[where.priority]
        mine = self._turn_key(where.user_id, lane)
        for user, other in users.items():
            n = len(other)
            # rounds before r: everyone's first min(n, r) jobs
            k = min(n, r)
            count += k
            work += other.prefix[k]
            # round r: the members ahead of us in the rotation
            if n > r and user != where.user_id and self._turn_key(user, other) < mine:
                count += 1
                work += other.cost_at(r)
        return count, work

    def __iter__(self) -> Iterator[Job]:
        """Every queued job in the order it will run."""
        yield from self._retry.jobs
        for priority in sorted(self._classes, reverse=True):
            users = self._classes[priority]
            rotation = sorted(users.values(), key=lambda lane: self._turn_key(lane.jobs[0].user_id, lane))
            for r in itertools.count():
                emitted = False
                for lane in rotation:
                    if len(lane) > r:
                        emitted = True
                        yield lane.jobs[r]
                if not emitted:
                    break

    def ordered(self, limit: int | None = None) -> list[Job]:
        return list(itertools.islice(iter(self), limit))

    def ordered_with_work(self, limit: int | None = None) -> list[tuple[Job, float, float]]:
        """(job, work ahead of it, its own cost) for the first `limit` jobs, in order."""
        out: list[tuple[Job, float, float]] = []
        ahead = 0.0
        for job in itertools.islice(iter(self), limit):
            cost = self.cost_of(job.id) or 0.0
            out.append((job, ahead, cost))
            ahead += cost
        return out

    def refresh_costs(self) -> None:
        """Re-estimate every queued job's cost (O(jobs)); call after the cost model changed."""
        for lane in self._lanes():
            prefix = [0.0]
            for job in lane.jobs:
                prefix.append(prefix[-1] + self._cost(job))
            lane.prefix = prefix

    # -- internals ----------------------------------------------------------------------------

    def _lanes(self) -> Iterator[_Lane]:
        yield self._retry
        for users in self._classes.values():
            yield from users.values()

    def _lane(self, where: _Where) -> _Lane:
        if where.priority is None:
            return self._retry
        return self._classes[where.priority][where.user_id]

    def _turn_key(self, user_id: str, lane: _Lane) -> tuple[float, float, int]:
        arrived, seq = lane.keys[0]
        return (max(self._last_served.get(user_id, -math.inf), arrived), arrived, seq)


def batch_companions(
    head: Job, following: Sequence[Job], *, limit: int, key: Callable[[Job], Hashable | None]
) -> list[Job]:
    """Up to `limit` jobs from `following` (the next positions, in fair order) that may share
    `head`'s pipeline call: the same `key`, never None.

    Fair order holds inside the window: once a member has a job that cannot join, none of that
    member's later jobs may jump ahead of it; the head always leads.
    """
    wanted = key(head)
    if wanted is None or limit <= 0:
        return []
    chosen: list[Job] = []
    held_back: set[str] = set()
    for job in following:
        if len(chosen) >= limit:
            break
        if job.user_id in held_back:
            continue
        if key(job) == wanted:
            chosen.append(job)
        else:
            held_back.add(job.user_id)
    return chosen
