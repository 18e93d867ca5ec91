"""Point discord.py at another Discord: a REST rate-limit proxy, or the tests' fake Discord.

discord.py 2.7 builds every REST URL from one class attribute, `discord.http.Route.BASE`
(the webhook and interaction-callback adapters use the same `Route`), and opens the gateway
at `DiscordWebSocket.DEFAULT_GATEWAY` unless it is sharded: it never asks `GET /gateway/bot`
for an unsharded client. It also falls back to `DEFAULT_GATEWAY` whenever a session is
invalidated, and resumes at the `resume_gateway_url` that READY names. So two class
attributes carry the whole session; setting both before `Client.start()` is all it takes.

Both are process-wide, which matches a process that runs one bot. Call
`configure_discord_endpoint` once in the launcher, before `bot.start(token)`:

    await configure_discord_endpoint(
        api_base=settings.discord_api_base,
        gateway_url=settings.discord_gateway_url,
        token=settings.discord_token.get_secret_value(),
    )

With no `api_base` (and no `gateway_url`) it restores discord.py's defaults, so a test that
configured a fake Discord cannot leak its address into the next one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://discord.com/api/v10"
DEFAULT_GATEWAY_URL = "wss://gateway.discord.gg/"
API_PATH = "/api/v10"
GATEWAY_LOOKUP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class DiscordEndpoint:
    """Where discord.py now sends REST calls and opens its gateway."""

    api_base: str
    gateway_url: str


class GatewayLookupError(RuntimeError):
    """`GET /gateway/bot` at the configured base failed; the message says how to fix it."""


def normalise_api_base(api_base: str) -> str:
    """Accept `http://host:port` as well as `http://host:port/api/v10` (what proxies document)."""
    url = yarl.URL(api_base.strip())
    if not url.scheme or not url.host:
        raise ValueError(f"DISCORD_API_BASE must be an absolute http(s) URL, got {api_base!r}")
    if url.path in ("", "/"):
        url = url.with_path(API_PATH)
    return str(url).rstrip("/")


def apply_discord_endpoint(*, api_base: str | None, gateway_url: str | None) -> DiscordEndpoint:
    """Set both class attributes; `None` restores the real Discord's value."""
    base = normalise_api_base(api_base) if api_base else DEFAULT_API_BASE
    gateway = gateway_url.strip() if gateway_url else DEFAULT_GATEWAY_URL
    Route.BASE = base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
    return DiscordEndpoint(api_base=base, gateway_url=gateway)


def reset_discord_endpoint() -> None:
    """Back to discord.com (tests call this when their fake Discord goes away)."""
    apply_discord_endpoint(api_base=None, gateway_url=None)


async def fetch_gateway_url(
    api_base: str, *, token: str | None, session: aiohttp.ClientSession | None = None
) -> str:
    """Ask the REST base where its gateway is: `/gateway/bot` with a token, else `/gateway`."""
    base = normalise_api_base(api_base)
    path = "/gateway/bot" if token else "/gateway"
    headers = {"Authorization": f"Bot {token}"} if token else {}
    own_session = session is None
    http = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=GATEWAY_LOOKUP_TIMEOUT_S))
    try:
        async with http.get(base + path, headers=headers) as response:
            if response.status == 401:
                raise GatewayLookupError(
                    f"{base}{path} refused the bot token (401): check DISCORD_TOKEN "
                    "(Developer Portal → your application → Bot → Reset Token)"
                )
            if response.status != 200:
                body = (await response.text())[:200]
                raise GatewayLookupError(
                    f"{base}{path} answered {response.status}: {body!r}; "
                    "set DISCORD_GATEWAY_URL to skip this lookup"
                )
            data = await response.json(content_type=None)
    except aiohttp.ClientError as exc:
        raise GatewayLookupError(
            f"cannot reach {base}{path} ({exc}); check DISCORD_API_BASE or set DISCORD_GATEWAY_URL"
        ) from exc
    finally:
        if own_session:
            await http.close()
    url = data.get("url") if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        raise GatewayLookupError(f"{base}{path} returned no gateway url: {data!r}")
    return url


async def configure_discord_endpoint(
    api_base: str | None,
    gateway_url: str | None,
    *,
    token: str | None = None,
    session: aiohttp.ClientSession | None = None,
) -> DiscordEndpoint:
    """Make this process's discord.py talk to `api_base` (REST) and its gateway.

    The gateway URL is `gateway_url` when given, else the one `GET {api_base}/gateway/bot`
    names (so a proxy or fake Discord decides), else Discord's own. Call before
    `Client.start()`; `Client.login()` already uses the REST base.
    """
    if api_base and not gateway_url:
        gateway_url = await fetch_gateway_url(api_base, token=token, session=session)
    endpoint = apply_discord_endpoint(api_base=api_base, gateway_url=gateway_url)
    if api_base or gateway_url:
        log.info("Discord endpoint: REST %s, gateway %s", endpoint.api_base, endpoint.gateway_url)
    return endpoint
