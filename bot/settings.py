"""Every knob of the bot, with its default; each has a line in `.env.example`.

Built once by the launcher and handed to whatever needs it: nothing reads the environment
anywhere else.
"""

from __future__ import annotations

import logging

from pydantic import Field, SecretStr, field_validator

from generation.scaleout import ScaleoutSettings

log = logging.getLogger(__name__)


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
    log_buffer_max: int = 10_000  # request-log writes kept in memory while the store is down

    # queue and fairness
    max_queue: int = 200
    max_queued_per_user: int = 5
    daily_gpu_seconds_per_user: float = 1800.0
    priority_roles: dict[str, int] = Field(default_factory=dict)  # role name/id -> priority
    max_tries: int = 2
    lease_s: float = 60.0
    progress_edit_interval_s: float = 2.0

    # moderation: words or `re:` patterns refused in every prompt, from every server, DMs and the
    # REST API; each server adds its own with /admin blocklist
    prompt_blocklist: list[str] = Field(default_factory=list)

    # web server
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    api_keys: dict[str, SecretStr] = Field(default_factory=dict)  # key name -> secret
    # API key names whose prompts and results the public status page may show (default: none)
    public_api_keys: list[str] = Field(default_factory=list)
    link_secret: SecretStr | None = None  # signs download links; random per start if unset
    link_expiry_s: int = 7 * 24 * 3600
    results_dir: str = "data/results"

    # scale-out: QUEUE_URL and the worker knobs are in generation.scaleout.ScaleoutSettings,
    # which the workers (python -m generation.worker) read too

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
