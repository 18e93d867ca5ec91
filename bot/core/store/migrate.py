"""Copy everything one store keeps into another: SQLite to MongoDB or back, for an owner who
outgrows the embedded file (or leaves a server), without losing a member's history.

Every collection in `COLLECTIONS` travels in the drivers' portable records, oldest first, in
batches; an import replaces records with the same key, so a copy run twice (or rerun after an
interruption, with `merge=True`) ends with the same data. A target that already holds records is
refused unless `merge=True`, so a typo in the target URL cannot mix two bots' data silently.
The schema version is not copied: each store records its own at `open()`, and both are opened by
this code, so both are at this code's version.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.core.store.base import COLLECTIONS, Store
from generation.errors import UserError

log = logging.getLogger(__name__)

#: called with (collection, records copied so far, records in the source) after every batch
Progress = Callable[[str, int, int], None]


class TargetNotEmpty(UserError):
    """The target already holds records and `merge` was not asked for."""

    code = "target_not_empty"

    def __init__(self, counts: dict[str, int]) -> None:
        held = ", ".join(f"{n} {name}" for name, n in counts.items())
        super().__init__(
            f"The target store is not empty ({held}). Copy into an empty store, or pass --merge to "
            "add to it (records with the same id are replaced by the source's)."
        )
        self.counts = counts


@dataclass
class CopyReport:
    """What a copy did: records copied per collection, and what each store holds afterwards."""

    copied: dict[str, int] = field(default_factory=dict)
    source_counts: dict[str, int] = field(default_factory=dict)
    target_counts: dict[str, int] = field(default_factory=dict)
    source_schema: int = 0
    target_schema: int = 0
    seconds: float = 0.0


async def record_counts(store: Store) -> dict[str, int]:
    return {name: await store.count_records(name) for name in COLLECTIONS}


async def copy_store(
    source: Store,
    target: Store,
    *,
    merge: bool = False,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy every record of the opened `source` into the opened `target`."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    t0 = time.monotonic()
    report = CopyReport(source_counts=await record_counts(source))
    held = {name: n for name, n in (await record_counts(target)).items() if n}
    if held and not merge:
        raise TargetNotEmpty(held)
    for name in COLLECTIONS:
        total = report.source_counts[name]
        done = 0
        if progress is not None:
            progress(name, done, total)
        async with contextlib.aclosing(source.export_records(name, batch_size=batch_size)) as batches:
            async for batch in batches:
                await target.import_records(name, batch)
                done += len(batch)
                if progress is not None:
                    progress(name, done, total)
        report.copied[name] = done
        log.info("copied %d %s records", done, name)
    report.target_counts = await record_counts(target)
    report.source_schema = await source.schema_version()
    report.target_schema = await target.schema_version()
    report.seconds = time.monotonic() - t0
    return report
