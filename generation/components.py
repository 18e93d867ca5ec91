"""Component overrides: single pipeline parts taken from another repo (`ModelSpec.components`).

A fine-tuned or LoRA-merged UNet, or a community conversion that publishes only a UNet
(VideoCrafter2's), is served on top of a base repo's pipeline without copying the rest.
"""

from __future__ import annotations

import logging
from typing import Any

from generation.errors import ModelUnavailable
from generation.spec import ModelSpec

log = logging.getLogger(__name__)


def load_components(spec: ModelSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Components that `spec.components` takes from another repo (a fine-tuned or merged UNet...).

    "owner/repo/sub/folder" loads `sub/folder` of owner/repo; a local directory loads as is. The
    class comes from the component's own config (`_class_name`), so any diffusers model fits.
    """
    import diffusers

    loaded: dict[str, Any] = {}
    for name, source in spec.components.items():
        where, subfolder = _split_source(source)
        config = _read_config(where, subfolder, kwargs)
        cls = getattr(diffusers, str(config.get("_class_name")), None)
        if cls is None:
            raise ModelUnavailable(
                f"Model {spec.id!r}: component {name!r} from {source} has class "
                f"{config.get('_class_name')!r}, which diffusers does not have."
            )
        log.info("model %s: %s from %s (%s)", spec.id, name, source, cls.__name__)
        loaded[name] = cls.from_pretrained(where, subfolder=subfolder, **kwargs)
    return loaded


def _split_source(source: str) -> tuple[str, str | None]:
    from pathlib import Path

    if Path(source).is_dir():
        return source, None
    owner, repo, *sub = source.split("/")
    return f"{owner}/{repo}", "/".join(sub) or None


def _read_config(where: str, subfolder: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The component's config.json, from a local folder or the hub (cache, token, offline honoured)."""
    import json
    from pathlib import Path

    if Path(where).is_dir():
        path = Path(where, subfolder or "", "config.json")
    else:
        from huggingface_hub import hf_hub_download

        hub = {k: kwargs[k] for k in ("cache_dir", "token", "local_files_only") if k in kwargs}
        path = Path(hf_hub_download(where, "config.json", subfolder=subfolder, **hub))
    return json.loads(path.read_text(encoding="utf-8"))
