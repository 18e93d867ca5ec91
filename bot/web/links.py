"""Signed, expiring download links for results too big to upload to Discord.

A link is `PUBLIC_URL/dl/<job id>?e=<unix expiry>&s=<signature>`, where the signature is
HMAC-SHA256 over the job id and the expiry, keyed by `LINK_SECRET`. Job ids are random,
but the signature is what makes a link unguessable and unforgeable, and the expiry keeps a
link pasted elsewhere from working forever. Without `LINK_SECRET`, a random secret is drawn
once per process start: every signer built in that process (the bot's delivery and the web
server) agrees, and links die with the process, which is the documented trade-off.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)

DOWNLOAD_PREFIX = "/dl/"
#: drawn once per process start; used only when LINK_SECRET is unset
_PROCESS_SECRET = secrets.token_bytes(32)


class LinkInvalid(Exception):
    """The signature does not match (tampered or forged link)."""


class LinkExpired(Exception):
    """The signature is right but the link's time is up."""


class LinkSigner:
    def __init__(self, *, secret: bytes, public_url: str, expiry_s: int) -> None:
        if len(secret) < 16:
            raise ValueError("LINK_SECRET must be at least 16 characters long")
        self._secret = secret
        self.public_url = public_url.rstrip("/")
        self.expiry_s = expiry_s

    @classmethod
    def from_settings(cls, settings: Settings) -> LinkSigner:
        if settings.link_secret is not None and settings.link_secret.get_secret_value():
            secret = settings.link_secret.get_secret_value().encode()
        else:
            secret = _PROCESS_SECRET
        return cls(secret=secret, public_url=settings.public_url, expiry_s=settings.link_expiry_s)

    def signature(self, job_id: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{job_id}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def sign(self, job_id: str, expires_at: datetime | None = None) -> str:
        """The full download URL for `job_id`, valid until `expires_at` (default: LINK_EXPIRY_S)."""
        if expires_at is None:
            expires_at = datetime.now(UTC) + timedelta(seconds=self.expiry_s)
        expires = int(expires_at.timestamp())
        query = urlencode({"e": expires, "s": self.signature(job_id, expires)})
        return f"{self.public_url}{DOWNLOAD_PREFIX}{quote(job_id, safe='')}?{query}"

    def verify(
        self, job_id: str, expires: str | None, signature: str | None, *, now: datetime | None = None
    ) -> None:
        """Raise LinkInvalid or LinkExpired; return quietly for a good link.

        The signature is checked first, in constant time, so an attacker learns nothing
        about expiry from a forged link, and an expired link is told apart from a forged one.
        """
        if not expires or not signature or not expires.isdigit() or len(expires) > 12:
            raise LinkInvalid("missing or malformed link parameters")
        expected = self.signature(job_id, int(expires))
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise LinkInvalid("bad signature")
        now = now or datetime.now(UTC)
        if int(expires) <= now.timestamp():
            raise LinkExpired("link expired")
