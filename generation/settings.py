"""Settings the generation core reads: where models come from and how they are run.

The bot's settings extend this class, so one `.env` configures both; the CLI reads it alone.
JSON-valued settings are parsed here rather than by pydantic-settings, so a malformed value
is reported with an example of the expected shape and without echoing the value (it may be a
secret).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

log = logging.getLogger(__name__)

SETTINGS_CONFIG = SettingsConfigDict(
    env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
)

#: what a JSON-valued setting looks like, shown when its value does not parse
JSON_EXAMPLES: dict[str, str] = {
    "extra_models": 'EXTRA_MODELS={"my-model": {"repo_id": "org/repo", "kind": "image"}}',
    "api_keys": 'API_KEYS={"name": "secret"}',
    "priority_roles": 'PRIORITY_ROLES={"Patron": 10}',
}
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
#: sdpa and eager run anywhere; the others are diffusers' dispatch backends for a CUDA GPU
AttentionBackend = Literal[
    "sdpa", "eager", "flash", "_flash_3", "sage", "xformers", "_native_cudnn", "_native_flash",
    "_native_efficient",
]
CompileMode = Literal["off", "default", "max-autotune-no-cudagraphs"]


def json_object(value: Any, *, field: str) -> Any:
    """A JSON object from the environment (a dict passes through); the error shows the shape."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"must be a JSON object, e.g. {JSON_EXAMPLES[field]}") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object, e.g. {JSON_EXAMPLES[field]}")
    return value


class LogSettings(BaseSettings):
    """Read on its own before the other settings, so even a settings error is logged at this level."""

    model_config = SETTINGS_CONFIG

    # DEBUG also prints the traceback behind a start-up error
    log_level: LogLevel = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @classmethod
    def lenient(cls) -> LogSettings:
        """The configured level, or INFO when LOG_LEVEL itself is wrong (the full load says so)."""
        try:
            return cls()
        except (ValidationError, SettingsError):
            return cls.model_construct(log_level="INFO")


class GenerationSettings(LogSettings):
    hf_token: SecretStr | None = Field(default=None, description="Hugging Face token for gated repos")
    model_cache_dir: Path = Field(default=Path("models"), description="where weights are cached")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    memory_mode: Literal["auto", "full", "offload", "sequential"] = "auto"
    safety_checker: bool = True
    image_model: str = "sd15"
    video_model: str = "damo"
    # animates a picture when the request names no model (the lightest verified image-to-video one)
    i2v_model: str = "ltx-i2v"
    # what `Upscale` and the `Upscale` message command run (a model of kind "upscale")
    upscale_model: str = "sd-x4-upscaler"
    # extra models by configuration, no code: a JSON object of model id -> spec fields,
    # e.g. {"sdxl-turbo": {"repo_id": "stabilityai/sdxl-turbo", "pipeline": "AutoPipelineForText2Image",
    #        "kind": "image", "default_width": 512, "default_height": 512}}
    extra_models: Annotated[dict[str, dict[str, Any]], NoDecode] = Field(default_factory=dict)
    default_steps: int | None = Field(default=None, ge=1)  # overrides the model's default steps
    max_steps: int | None = Field(default=None, ge=1)  # caps every model's maximum steps
    job_timeout_s: float = Field(default=900.0, gt=0)
    step_watchdog_s: float = Field(default=300.0, gt=0)
    # never contact the Hugging Face hub: load only what MODEL_CACHE_DIR already holds
    hf_offline: bool = False
    # pipelines kept loaded at once; loading one more unloads the least recently used
    max_resident_models: int = Field(default=2, ge=1)
    # a low-res preview from the latents every N denoising steps (0 = none)
    preview_every_steps: int = Field(default=5, ge=0)
    # images per /imagine when the member asks for no count (1-4: one grid of that many)
    default_image_count: int = Field(default=1, ge=1, le=4)
    # the tuned path (generation/tuning.py); each choice is logged once per model load
    attention_backend: AttentionBackend = "sdpa"
    fuse_qkv: bool = True
    channels_last: bool = True
    allow_tf32: bool = True
    compile: CompileMode = "off"

    @field_validator("extra_models", mode="before")
    @classmethod
    def _extra_models_json(cls, value: Any) -> Any:
        return json_object(value, field="extra_models")


def _is_secret(model: type[BaseSettings], name: str) -> bool:
    """Never repeated in an error message: secrets, and URLs (which may carry a password)."""
    field = model.model_fields.get(name)
    return "url" in name or "base" in name or (field is not None and "SecretStr" in str(field.annotation))


def settings_error_lines(exc: ValidationError | SettingsError, model: type[BaseSettings]) -> Iterator[str]:
    """One line per wrong setting, named as it is written in `.env`, saying what would work.

    The value is repeated only for settings that cannot hold a secret (tokens, keys and URLs,
    which may carry a password, never are).
    """
    if isinstance(exc, SettingsError):
        # pydantic-settings could not decode a value: "error parsing value for field "x" from source …"
        text = str(exc)
        name = text.split('"')[1] if text.count('"') >= 2 else "a setting"
        yield f"{name.upper()}: the value is not valid JSON"
        return
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        name = loc[0].upper() if loc else "SETTINGS"
        where = f" (entry {'.'.join(loc[1:])!r})" if len(loc) > 1 else ""
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        message = message.removeprefix(f"{name}: ")
        if error["type"] in {"dict_type", "dict_parsing"} and loc and loc[0] in JSON_EXAMPLES:
            message = f"must be a JSON object, e.g. {JSON_EXAMPLES[loc[0]]}"
        value = error.get("input")
        shown = ""
        if loc and not _is_secret(model, loc[0]) and isinstance(value, str | int | float) and len(loc) == 1:
            shown = f" (got {str(value)[:80]!r})"
        yield f"{name}{where}: {message}{shown}"
