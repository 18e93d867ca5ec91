"""Every knob of the bot, with its default; each has a line in `.env.example`.

Built once by the launcher and handed to whatever needs it: nothing reads the environment
anywhere else. Values are checked here (ranges, URL shapes, JSON), so a mistake stops start-up
in one line naming the setting, before anything is opened or loaded.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from bot.core.inputs import InputLimits
from generation.scaleout import ScaleoutSettings
from generation.settings import json_object

log = logging.getLogger(__name__)

#: URL settings and the schemes each accepts
URL_SCHEMES: dict[str, tuple[str, ...]] = {
    "public_url": ("http", "https"),
    "discord_api_base": ("http", "https"),
    "discord_gateway_url": ("ws", "wss"),
    "queue_url": ("redis", "rediss", "unix"),
}


def check_url(value: str, *, schemes: tuple[str, ...]) -> str:
    """An absolute URL with one of `schemes` and a host (the message never repeats the value)."""
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number or out of range
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    example = f"{schemes[0]}://host:port"
    if parts.scheme not in schemes:
        raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)} (e.g. {example})")
    if not parts.hostname and parts.scheme != "unix":
        raise ValueError(f"names no host (e.g. {example})")
    return value.strip()


def url_host(host: str) -> str:
    """`host` as it goes into a URL: IPv6 addresses in brackets, any-address as loopback."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


class Settings(ScaleoutSettings):
    # Discord
    discord_token: SecretStr | None = None
    discord_api_base: str | None = None  # e.g. a rate-limit proxy, or the tests' fake Discord
    discord_gateway_url: str | None = None
    dev_guild_id: int | None = None  # sync commands to one guild instantly while developing
    admin_role: str | None = None  # role name or id that may use /admin besides Manage Server

    # store
    store_url: str = "sqlite:///data/bot.db"
    mongodb_db: str = "imaginebot"
    mongodb_write_concern: str = "majority"
    log_buffer_max: int = Field(default=10_000, ge=0)  # request-log writes kept while the store is down

    # queue and fairness
    max_queue: int = Field(default=200, ge=1)
    max_queued_per_user: int = Field(default=5, ge=1)
    daily_gpu_seconds_per_user: float = Field(default=1800.0, ge=0)
    priority_roles: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)  # role -> priority
    max_tries: int = Field(default=2, ge=1)
    lease_s: float = Field(default=60.0, gt=0)
    progress_edit_interval_s: float = Field(default=2.0, ge=0)
    # cross-member batching: compatible jobs from the next BATCH_WINDOW places share one call
    batch_max_images: int = Field(default=4, ge=1)
    batch_max_videos: int = Field(default=1, ge=1)
    batch_window: int = Field(default=8, ge=1)

    # moderation: words or `re:` patterns refused in every prompt, from every server, DMs and the
    # REST API; each server adds its own with /admin blocklist
    prompt_blocklist: list[str] = Field(default_factory=list)

    # web server
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    # where members' browsers reach the web server (download links); unset = from WEB_HOST/WEB_PORT
    public_url: str | None = None
    api_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)  # name -> secret
    # API key names whose prompts and results the public status page may show (default: none)
    public_api_keys: list[str] = Field(default_factory=list)
    link_secret: SecretStr | None = None  # signs download links; random per start if unset
    link_expiry_s: int = Field(default=7 * 24 * 3600, gt=0)
    results_dir: str = "data/results"
    # how much of the image a V button repaints (image-to-image strength, 0-1)
    variation_strength: float = Field(default=0.45, gt=0.0, le=1.0)
    # /readyz reports "not ready" when the results folder's disk has less free space than this
    min_free_disk_mb: int = Field(default=500, ge=0)
    # caps on an input picture (a /video or /imagine attachment, a REST base64 image)
    input_image_max_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    input_image_max_pixels: int = Field(default=4096 * 4096, gt=0)

    # scale-out: QUEUE_URL and the worker knobs are in generation.scaleout.ScaleoutSettings,
    # which the workers (python -m generation.worker) read too

    _public_url_derived: bool = PrivateAttr(default=False)

    @field_validator("api_keys", "priority_roles", mode="before")
    @classmethod
    def _json_objects(cls, value: Any, info: Any) -> Any:
        return json_object(value, field=info.field_name)

    @field_validator("prompt_blocklist")
    @classmethod
    def _valid_patterns(cls, entries: list[str]) -> list[str]:
        """Entries as /admin blocklist stores them; a bad regular expression stops the start-up."""
        from bot.core.moderation import validate_pattern  # the one rule for blocklist entries
        from generation.errors import InvalidRequest

        try:
            return [validate_pattern(entry) for entry in entries]
        except InvalidRequest as exc:
            raise ValueError(f"PROMPT_BLOCKLIST: {exc.message}") from None

    @field_validator("web_port")
    @classmethod
    def _port_range(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("must be a port number from 1 to 65535 (0 picks a free one)")
        return value

    @field_validator(*URL_SCHEMES, mode="after")
    @classmethod
    def _urls(cls, value: str | None, info: Any) -> str | None:
        return None if value is None else check_url(value, schemes=URL_SCHEMES[info.field_name])

    @field_validator("results_dir")
    @classmethod
    def _results_dir(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("names no folder (e.g. RESULTS_DIR=data/results)")
        return value

    @model_validator(mode="after")
    def _default_public_url(self) -> Settings:
        if self.public_url is None:
            self.public_url = f"http://{url_host(self.web_host)}:{self.web_port}"
            self._public_url_derived = True
        return self

    @property
    def public_url_derived(self) -> bool:
        """PUBLIC_URL was not set and is derived from WEB_HOST/WEB_PORT."""
        return self._public_url_derived

    @property
    def input_limits(self) -> InputLimits:
        return InputLimits(max_bytes=self.input_image_max_bytes, max_pixels=self.input_image_max_pixels)

    def with_bound_port(self, port: int) -> None:
        """Point a derived PUBLIC_URL at the port really bound (WEB_PORT=0 picks one)."""
        if self._public_url_derived:
            self.public_url = f"http://{url_host(self.web_host)}:{port}"
