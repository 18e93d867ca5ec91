"""API keys: `Authorization: Bearer <key>`, checked in constant time against `API_KEYS`.

A REST caller is a user of the bot like a Discord member: its jobs are logged as
`user_id = "api:<key name>"`, and an admin can ban that user id (403 from then on).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import SecretStr

from bot.web.errors import ApiError

log = logging.getLogger(__name__)

USER_PREFIX = "api:"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="imagine-bot"'}


@dataclass(frozen=True)
class ApiCaller:
    """The authenticated owner of an API key."""

    key_name: str

    @property
    def user_id(self) -> str:
        return USER_PREFIX + self.key_name

    @property
    def user_name(self) -> str:
        return self.key_name


class ApiKeys:
    """Looks a presented key up without revealing, through timing, which key is close.

    Keys are compared as SHA-256 digests with `hmac.compare_digest`, and every configured
    key is compared on each request (no early exit), so neither the position of the first
    differing byte nor the key's length nor which key matched shows in the response time.
    """

    def __init__(self, keys: Mapping[str, SecretStr | str]) -> None:
        self._digests: list[tuple[str, bytes]] = []
        for name, secret in keys.items():
            value = secret.get_secret_value() if isinstance(secret, SecretStr) else str(secret)
            if not value:
                log.warning("API key %r is empty and is ignored", name)
                continue
            self._digests.append((name, hashlib.sha256(value.encode()).digest()))

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, presented: str) -> str | None:
        """The name of the key `presented` equals, or None."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: str | None = None
        for name, expected in self._digests:
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        return found

    def authenticate(self, authorization: str | None) -> ApiCaller:
        """The caller for an `Authorization` header value; raises a 401 `ApiError` otherwise."""
        if not authorization:
            raise ApiError(
                401,
                "unauthorized",
                "Missing API key: send 'Authorization: Bearer <key>'.",
                headers=_CHALLENGE,
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "unauthorized",
                "Malformed Authorization header: use 'Authorization: Bearer <key>'.",
                headers=_CHALLENGE,
            )
        name = self.identify(token)
        if name is None:
            raise ApiError(401, "unauthorized", "Invalid API key.", headers=_CHALLENGE)
        return ApiCaller(key_name=name)
