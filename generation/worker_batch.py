"""A batch of members' jobs on one worker: one arq job carries them, one pipeline call runs them.

The bot hands the head of its fair order to arq with the companions' payloads inside
(:data:`BATCH_FIELD`). Only the head is an arq job, so the whole batch lands on one worker and
no other worker can take a companion. For the bot each companion stays a job of its own: the
worker reports its start, progress and end under the companion's own arq id, writes its result
where arq would (the result key, in arq's format, so the bot collects it like any other), and
watches arq's abort set for it, since arq itself aborts only the jobs it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from arq.constants import abort_jobs_ss, result_key_prefix
from arq.jobs import serialize_result

from generation import failures
from generation.phases import JobPhase
from generation.runner import RunItem, RunResult
from generation.scaleout import BATCH_FIELD, JOB_FUNCTION, JobPayload, JobReport

if TYPE_CHECKING:
    from generation.worker_runtime import WorkerRuntime

log = logging.getLogger(__name__)

__all__ = ["BATCH_FIELD", "run_batch"]
#: how often a running batch looks for a companion's cancel
ABORT_POLL_S = 0.2


async def run_batch(rt: WorkerRuntime, lead_id: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Run the lead and its companions as one pipeline call; returns the lead's report (arq
    records it), while each companion's report is written under its own id as it ends.

    The lead's cancel (arq's abort) may land while the batch is still being handed to the GPU
    thread: the hand-over finishes regardless, so the companions still run, and the lead then
    leaves the call as at any other step."""
    handing = asyncio.ensure_future(_hand_over(rt, lead_id, raw))
    cancelled = False
    while not handing.done():
        try:
            await asyncio.shield(handing)
        except asyncio.CancelledError:
            cancelled = True
    members, refused = handing.result()
    if cancelled and (task := asyncio.current_task()) is not None:
        task.uncancel()
    if refused is not None:
        return refused
    assert rt.runner is not None
    if cancelled:
        log.info("job %s: cancel received, it leaves its batch", lead_id)
        rt.runner.cancel(lead_id)
    result = await rt._wait(lead_id, rt.done_futures[lead_id])
    await rt._gpu_released(lead_id)
    return await rt._report(members[lead_id], result)


async def _hand_over(
    rt: WorkerRuntime, lead_id: str, raw: dict[str, Any]
) -> tuple[dict[str, JobPayload], dict[str, Any] | None]:
    """The members read, checked and handed to the GPU thread as one call; with a report for
    the lead instead when it does not run (damaged, or refused with the whole batch)."""
    members: dict[str, JobPayload] = {}
    items: list[RunItem] = []
    companions = {str(c["arq_id"]): dict(c["payload"]) for c in raw.get(BATCH_FIELD) or []}
    aborted = await _aborted(rt, list(companions))
    for arq_id, data in [(lead_id, raw), *companions.items()]:
        try:
            payload, item = await rt.prepare(arq_id, data)
        except (TypeError, ValueError, KeyError) as exc:
            log.error("job %s: payload cannot be read: %s", arq_id, exc)
            if arq_id != lead_id:
                await _deliver(rt, arq_id, _report(rt, "failed", failures.DAMAGED))
            continue
        if arq_id in aborted:
            await _deliver(rt, arq_id, _report(rt, "cancelled", failures.CANCELLED_BEFORE_START))
            continue
        members[arq_id] = payload
        items.append(item)
    if not items:
        return members, _report(rt, "failed", failures.DAMAGED)
    refused = await _submit(rt, lead_id, members, items)
    if refused is None and lead_id not in members:
        refused = _report(rt, "failed", failures.DAMAGED)
    return members, refused


async def _submit(
    rt: WorkerRuntime, lead_id: str, members: dict[str, JobPayload], items: list[RunItem]
) -> dict[str, Any] | None:
    """One call for every member on the GPU thread, the companions' ends watched; None when
    taken, else the lead's report."""
    loop = asyncio.get_running_loop()
    for item in items:
        rt.jobs[item.key] = JobPhase.RUNNING
        rt.job_ids[item.key] = members[item.key].job_id
        rt.done_futures[item.key] = loop.create_future()
    await rt._safe(rt.beat())  # the bot sees at once who holds every member
    assert rt.runner is not None
    try:
        rt.runner.submit_batch(items)
    except Exception:
        log.exception("batch %s: the GPU thread refused it", lead_id)
        for item in items:
            rt.done_futures.pop(item.key, None)
            if item.key != lead_id:
                error = failures.CRASHED.format(job_id=item.job_id)
                await _deliver(rt, item.key, _report(rt, "failed", error))
        rt.release(lead_id)
        return _report(rt, "failed", failures.NOT_TAKEN.format(job_id=members[items[0].key].job_id))
    others = [key for key in members if key != lead_id]
    log.info("jobs %s run as one batch on worker %s", ", ".join(members), rt.worker_id)
    rt.spawn_task(_companions(rt, {key: members[key] for key in others}))
    return None


async def _companions(rt: WorkerRuntime, members: dict[str, JobPayload]) -> None:
    """Each companion ends on its own (nobody waits for another), while their cancels are watched."""
    watch = asyncio.create_task(_watch_aborts(rt, list(members)))
    try:
        await asyncio.gather(*(_finish(rt, key, payload) for key, payload in members.items()))
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


async def _finish(rt: WorkerRuntime, arq_id: str, payload: JobPayload) -> None:
    done = rt.done_futures[arq_id]
    try:
        result: RunResult = await done
    finally:
        rt.done_futures.pop(arq_id, None)
    await rt._gpu_released(arq_id)
    report = await rt._report(payload, result)
    await _deliver(rt, arq_id, report)
    rt.task_ended(arq_id)


async def _watch_aborts(rt: WorkerRuntime, ids: list[str]) -> None:
    """The bot cancels a companion as any job (arq's abort set); the runner drops it from the call."""
    pending = list(ids)
    while pending:
        await asyncio.sleep(ABORT_POLL_S)
        pending = [key for key in pending if key in rt.done_futures]
        if not pending:
            return
        try:
            scores = await rt.redis.zmscore(abort_jobs_ss, pending)
        except rt.redis_down as exc:
            log.warning("batch: cannot read cancels (%s)", exc)
            continue
        for key, score in zip(list(pending), scores, strict=True):
            if score is None or rt.runner is None:
                continue
            log.info("job %s: cancel received, it leaves its batch", key)
            rt.runner.cancel(key)
            pending.remove(key)
            await rt._safe(rt.redis.zrem(abort_jobs_ss, key))


async def _aborted(rt: WorkerRuntime, ids: list[str]) -> set[str]:
    if not ids:
        return set()
    scores = await rt.redis.zmscore(abort_jobs_ss, ids)
    return {key for key, score in zip(ids, scores, strict=True) if score is not None}


async def _deliver(rt: WorkerRuntime, arq_id: str, report: dict[str, Any]) -> None:
    """A companion's report where arq keeps results, then the "done" event the bot collects on."""
    now_ms = int(time.time() * 1000)
    data = serialize_result(
        JOB_FUNCTION, (), {}, 1, now_ms, True, report, now_ms, now_ms,
        f"{arq_id}:{JOB_FUNCTION}", rt.keys.queue, arq_id,
    )  # fmt: skip
    keep_ms = int(rt.settings.result_keep_s * 1000)
    await rt._safe(rt.redis.set(result_key_prefix + arq_id, data, px=keep_ms))
    rt.jobs_done += 1
    await rt._safe(rt._event("done", job=arq_id))


def _report(rt: WorkerRuntime, status: str, error: str) -> dict[str, Any]:
    return JobReport(status=status, worker_id=rt.worker_id, error=error).to_dict()  # type: ignore[arg-type]
