"""Settings the generation core reads: where models come from and how they are run.

The bot's settings extend this class, so one `.env` configures both; the CLI reads it alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class GenerationSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    hf_token: SecretStr | None = Field(default=None, description="Hugging Face token for gated repos")
    model_cache_dir: Path = Field(default=Path("models"), description="where weights are cached")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    memory_mode: Literal["auto", "full", "offload", "sequential"] = "auto"
    safety_checker: bool = True
    image_model: str = "sd15"
    video_model: str = "damo"
    # extra models by configuration, no code: a JSON object of model id -> spec fields,
    # e.g. {"sdxl-turbo": {"repo_id": "stabilityai/sdxl-turbo", "pipeline": "AutoPipelineForText2Image",
    #        "kind": "image", "default_width": 512, "default_height": 512}}
    extra_models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    default_steps: int | None = None  # overrides the model's default steps
    max_steps: int | None = None  # caps every model's maximum steps
    job_timeout_s: float = 900.0
    step_watchdog_s: float = 300.0
    # never contact the Hugging Face hub: load only what MODEL_CACHE_DIR already holds
    hf_offline: bool = False
    # pipelines kept loaded at once; loading one more unloads the least recently used
    max_resident_models: int = Field(default=2, ge=1)
    # a low-res preview from the latents every N denoising steps (0 = none)
    preview_every_steps: int = Field(default=5, ge=0)
