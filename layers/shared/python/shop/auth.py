"""Bearer ID token verification, the same code on AWS (Cognito) and locally (the dev provider).

The signing keys come from ``{issuer}/.well-known/jwks.json`` (``AuthSettings.jwks_url``): an
https URL of the Cognito user pool on AWS, a ``file://`` URL written by
``infra/local/identity.py`` locally. PyJWT's ``PyJWKClient`` only accepts http(s) URLs, so the
key set is fetched and cached here with ``urlopen`` (which reads both), with the same policy:
cached for a few minutes, refetched at most once per cooldown for an unknown ``kid`` (key
rotation) so forged ``kid`` values cannot make every request fetch the key set.

A token is accepted only if it is an RS256 ID token (``token_use == "id"``) signed by a key of
the set, not expired, from the configured issuer and for the configured audience (app client).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

import jwt
from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWTError

from shop.config import auth_settings
from shop.errors import Forbidden, TransientError, Unauthorized

ALGORITHMS = ["RS256"]
KEY_SET_LIFESPAN_SECONDS = 300.0
UNKNOWN_KID_COOLDOWN_SECONDS = 30.0
FETCH_TIMEOUT_SECONDS = 5.0
_REQUIRED_CLAIMS = ["sub", "iss", "aud", "exp", "iat", "token_use"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``subject`` is the stable user id (``sub``), the owner of their orders."""

    subject: str
    username: str
    groups: tuple[str, ...]
    is_admin: bool


class KeySet:
    """The issuer's public signing keys by ``kid``, fetched lazily and cached."""

    def __init__(self, url: str) -> None:
        if urlparse(url).scheme not in {"https", "http", "file"}:
            raise ValueError(f"unsupported JWKS URL: {url}")
        self.url = url
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def key(self, kid: str) -> PyJWK:
        with self._lock:
            now = time.monotonic()
            age = None if self._fetched_at is None else now - self._fetched_at
            expired = age is None or age >= KEY_SET_LIFESPAN_SECONDS
            # An unknown kid may be a rotated key: refetch, but at most once per cooldown.
            if expired or (kid not in self._keys and age is not None and age >= UNKNOWN_KID_COOLDOWN_SECONDS):
                self._refresh(now)
            found = self._keys.get(kid)
        if found is None:
            raise Unauthorized("the token was not signed by a known key")
        return found

    def _refresh(self, now: float) -> None:
        try:
            # The URL is configuration (never taken from a token), so file:// is safe here.
            with urllib.request.urlopen(self.url, timeout=FETCH_TIMEOUT_SECONDS) as response:
                document = json.load(response)
            key_set = PyJWKSet.from_dict(document)
        except (OSError, ValueError, PyJWTError) as error:  # URLError and timeouts are OSErrors
            # Not the caller's fault: the keys are unreachable, so the token cannot be checked yet.
            raise TransientError("the identity provider's signing keys are unavailable") from error
        self._keys = {key.key_id: key for key in key_set.keys if key.key_id and key.public_key_use in ("sig", None)}
        self._fetched_at = now


@lru_cache(maxsize=4)
def key_set(url: str) -> KeySet:
    return KeySet(url)


def _claims(token: str) -> dict[str, Any]:
    settings = auth_settings()
    try:
        header = jwt.get_unverified_header(token)
    except PyJWTError:
        raise Unauthorized("the bearer token is malformed") from None
    kid = header.get("kid")
    if not isinstance(kid, str) or header.get("alg") not in ALGORITHMS:
        raise Unauthorized("the bearer token is not an RS256 token with a key id")
    signing_key = key_set(settings.jwks_url).key(kid)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            signing_key,
            algorithms=ALGORITHMS,
            audience=settings.auth_audience,
            issuer=settings.auth_issuer,
            options={"require": _REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the bearer token has expired") from None
    except PyJWTError:
        raise Unauthorized("the bearer token is not valid") from None
    if claims.get("token_use") != "id":
        raise Unauthorized("an ID token is required")
    return claims


def _principal(claims: dict[str, Any]) -> Principal:
    subject = claims.get("sub")
    username = claims.get("cognito:username", subject)
    groups = claims.get("cognito:groups", [])
    if not isinstance(subject, str) or not subject or not isinstance(username, str):
        raise Unauthorized("the bearer token has no valid subject")
    if not isinstance(groups, list) or not all(isinstance(group, str) for group in groups):
        raise Unauthorized("the bearer token has malformed groups")
    return Principal(
        subject=subject,
        username=username,
        groups=tuple(groups),
        is_admin=auth_settings().admin_group in groups,
    )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None if the header is absent."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized("use the header Authorization: Bearer <token>")
    return token


def verify(token: str) -> Principal:
    """The principal of a valid token; Unauthorized (401) for any token that is not."""
    return _principal(_claims(token))


def authenticate(authorization: str | None) -> Principal:
    """The caller of a route that requires a token: 401 without a valid one."""
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized("this route needs a bearer token")
    return verify(token)


def authenticate_admin(authorization: str | None) -> Principal:
    """The caller of an admin route: 401 without a valid token, 403 if not in the admin group."""
    principal = authenticate(authorization)
    if not principal.is_admin:
        raise Forbidden("this route is for admins")
    return principal


def authenticate_optional(authorization: str | None) -> Principal | None:
    """The caller if a token was sent (which must then be valid), else None."""
    token = bearer_token(authorization)
    return None if token is None else verify(token)
