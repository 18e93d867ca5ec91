"""Loading failures turned into messages that name the setting to change (token, cache, repo id)."""

from __future__ import annotations

import logging

from generation.errors import ModelUnavailable
from generation.settings import GenerationSettings
from generation.spec import ModelSpec

log = logging.getLogger(__name__)


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return chain


def unavailable(spec: ModelSpec, exc: BaseException, settings: GenerationSettings) -> ModelUnavailable:
    """Turn a loading failure into a message that names the setting to change."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = spec.repo_id
    chain = _causes(exc)
    text = " ".join(str(e) for e in chain).lower()
    has_token = settings.hf_token is not None
    log.warning("could not load %s (%s): %s", spec.id, repo, exc)

    def any_of(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    if any_of(GatedRepoError) or "gated" in text:
        if has_token:
            return ModelUnavailable(
                f"The HF_TOKEN account has no access to the gated repo {repo}: accept its licence at "
                f"https://huggingface.co/{repo} with that account, or set HF_TOKEN to one that has."
            )
        return ModelUnavailable(
            f"{repo} is a gated repo: set HF_TOKEN to a Hugging Face token of an account that "
            f"accepted its licence at https://huggingface.co/{repo}."
        )
    if any_of(RevisionNotFoundError):
        return ModelUnavailable(f"{repo} has no revision {spec.revision!r}; fix 'revision' in EXTRA_MODELS.")
    if any_of(RepositoryNotFoundError) or "401" in text or "repository not found" in text:
        hint = "" if has_token else " (if it is private, set HF_TOKEN)"
        return ModelUnavailable(
            f"Model repo {repo} was not found on the Hugging Face hub{hint}; check the repo id "
            f"(EXTRA_MODELS) or pick another model with IMAGE_MODEL / VIDEO_MODEL."
        )
    offline = any_of(LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError) or any(
        word in text for word in ("connect", "offline", "not fully cached", "name or service", "timed out")
    )
    if offline:
        how = (
            "HF_OFFLINE=true forbids downloads"
            if settings.hf_offline
            else "the Hugging Face hub could not be reached"
        )
        return ModelUnavailable(
            f"Model {spec.id} ({repo}) is not in MODEL_CACHE_DIR={settings.model_cache_dir} and {how}: "
            "connect to the internet once (HF_OFFLINE=false) or point MODEL_CACHE_DIR at a cache "
            "that holds it."
        )
    if isinstance(exc, MemoryError) or "out of memory" in text:
        return ModelUnavailable(
            f"Not enough memory to load {spec.id}: try MEMORY_MODE=offload or sequential, or DTYPE=fp16."
        )
    return ModelUnavailable(
        f"Could not load model {spec.id} ({repo}): {type(exc).__name__}: {str(exc)[:200]}. "
        "Check MODEL_CACHE_DIR, HF_TOKEN and the model's repo id."
    )
