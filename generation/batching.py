"""Several members' image requests as one pipeline call, and each member's share of its output.

A batch extends the one runner-level "batch of samples" (:class:`generation.params.Sample`, one
`torch.Generator` per sample): the samples of every member's request go into one list, so each
member's seed draws the same noise it would alone and gives the same picture (up to
batched-matmul rounding). Which requests may share a call is the queue's question
(:func:`compatible_key`); splitting the output back is :func:`member_outputs`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from generation.outputs import GenerationOutput
from generation.params import GenerationRequest, ImageRequest, Sample

log = logging.getLogger(__name__)

#: request fields that may differ between the members of one batch: everything else (model,
#: size, steps, guidance, frames, fps, the scheduler the model implies) must match
PER_SAMPLE_FIELDS = frozenset({"prompt", "negative_prompt", "seed", "count"})


def compatible_key(kind: str, model: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What two jobs must share to run in one call; None when the job cannot join any batch.

    An input image cannot: no built-in image-to-video pipeline takes a batch of them.
    """
    if params.get("image") is not None:
        return None
    shared = tuple(sorted((k, repr(v)) for k, v in params.items() if k not in PER_SAMPLE_FIELDS))
    return (kind, model, shared)


@dataclass(frozen=True, kw_only=True)
class BatchRequest(ImageRequest):
    """The head member's request, carrying every member's samples (see the module docstring)."""

    batch: tuple[Sample, ...] = ()
    #: how many of `batch` each member owns, in order
    shares: tuple[int, ...] = ()

    def samples(self) -> tuple[Sample, ...]:
        return self.batch

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(s.seed for s in self.batch)


def batched_request(requests: Sequence[GenerationRequest]) -> BatchRequest:
    """One request for a pipeline call over all of `requests` (same model and shape)."""
    if not requests or not all(type(r) is ImageRequest and r.image is None for r in requests):
        raise ValueError("only text-to-image requests can be batched")
    head = requests[0]
    shape = _shape(head)
    if any(_shape(r) != shape for r in requests[1:]):
        raise ValueError("requests in one batch must share model, size, steps and guidance")
    samples = tuple(s for r in requests for s in r.samples())
    fields = {f.name: getattr(head, f.name) for f in dataclasses.fields(ImageRequest)}
    fields["count"] = len(samples)
    return BatchRequest(**fields, batch=samples, shares=tuple(r.count for r in requests))


def member_outputs(output: GenerationOutput, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
    """Split a batch's output into one output per member, in order, each with its own request.

    The safety verdict is per member: only a member whose own image was blacked out is flagged.
    """
    images = output.images or []
    unfiltered = output.unfiltered
    found: list[GenerationOutput] = []
    start = 0
    for request in requests:
        count = getattr(request, "count", 1)
        own = images[start : start + count]
        raw = unfiltered[start : start + count] if unfiltered else None
        flagged = bool(raw) and any(a.tobytes() != b.tobytes() for a, b in zip(own, raw or [], strict=True))
        found.append(
            dataclasses.replace(
                output,
                request=request,
                images=list(own),
                unfiltered=list(raw) if flagged and raw else None,
                nsfw_detected=flagged,
                timings=dict(output.timings),
            )
        )
        start += count
    if start != len(images):
        log.warning("a batch of %d images came back with %d", start, len(images))
    return found


def _shape(request: ImageRequest) -> tuple[Any, ...]:
    return (request.model, request.width, request.height, request.steps, request.guidance)


@dataclass
class _Group:
    members: list[Any]  # RunItems, in batch order
    discarded: set[str] = dataclasses.field(default_factory=set)


class Batches:
    """The runner's batches in flight: which member keys ride on which batch key.

    Called from the loop (cancel) and the GPU thread (callbacks, the end), so the caller holds
    its lock around every method.
    """

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}
        self._batch_of: dict[str, str] = {}

    def add(self, key: str, members: Sequence[Any]) -> None:
        self._groups[key] = _Group(members=list(members))
        for member in members:
            self._batch_of[member.key] = key

    def batch_of(self, member_key: str) -> str | None:
        return self._batch_of.get(member_key)

    def live(self, key: str) -> list[str]:
        """The keys a callback for `key` reaches: the batch's members not cancelled, or `key`."""
        group = self._groups.get(key)
        if group is None:
            return [key]
        return [m.key for m in group.members if m.key not in group.discarded]

    def discard(self, member_key: str) -> tuple[str, bool] | None:
        """Take a member out of its batch: (the batch key, whether no member is left)."""
        key = self._batch_of.pop(member_key, None)
        if key is None:
            return None
        group = self._groups[key]
        group.discarded.add(member_key)
        return key, len(group.discarded) == len(group.members)

    def settle(self, key: str) -> tuple[list[Any], set[str]] | None:
        """End a batch: all its members in order, and the keys of those cancelled meanwhile."""
        group = self._groups.pop(key, None)
        if group is None:
            return None
        for member in group.members:
            self._batch_of.pop(member.key, None)
        return group.members, group.discarded
