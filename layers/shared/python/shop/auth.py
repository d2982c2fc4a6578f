"""Bearer ID token verification, the same code on AWS (Cognito) and locally (the dev provider).

The signing keys come from ``{issuer}/.well-known/jwks.json`` (``AuthSettings.jwks_url``): the
Cognito user pool's https URL on AWS, the dev identity provider's http URL locally
(``infra/local/identity.py``). PyJWT's ``PyJWKClient`` fetches and parses the key set; the
caching policy is ``KeySet``'s (stale-while-revalidate):

- keys fetched less than ``KEYS_FRESH_SECONDS`` ago are served as they are;
- after that they are still served (a key does not stop being valid because the provider is
  slow or down) while one request refreshes them, for at most ``MAX_STALENESS_SECONDS`` after
  the last successful fetch; beyond that, with no fresh keys, tokens cannot be checked: 503;
- a failed refresh is retried only after a backoff (``RETRY_INITIAL_SECONDS`` doubling up to
  ``RETRY_MAX_SECONDS``), so an unreachable provider is not asked again by every request;
- an unknown ``kid`` (perhaps a rotated key) refetches at most once per
  ``UNKNOWN_KID_COOLDOWN_SECONDS``, so forged ``kid`` values cannot make every request fetch;
- no lock is held across the network call: one refresh is in flight at a time, and meanwhile
  other requests serve the cached keys (or, with nothing usable cached, wait for that refresh).

A token is accepted only if it is an RS256 ID token (``token_use == "id"``) signed by a key of
the set, not expired, from the configured issuer and for the configured audience (app client).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jwt
from jwt import PyJWK, PyJWKClient
from jwt.exceptions import PyJWTError
from pydantic import TypeAdapter, ValidationError

from shop.config import auth_settings
from shop.errors import Forbidden, TransientError, Unauthorized
from shop.models.common import CustomerId
from shop.observability import logger

ALGORITHMS = ["RS256"]
KEYS_FRESH_SECONDS = 300.0
MAX_STALENESS_SECONDS = 24 * 3600.0
UNKNOWN_KID_COOLDOWN_SECONDS = 30.0
RETRY_INITIAL_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0
FETCH_TIMEOUT_SECONDS = 5.0
# How long a request with nothing usable cached waits for another request's refresh (real time):
# a fetch's timeout applies to each socket operation, so allow it a few of them.
REFRESH_WAIT_SECONDS = 3 * FETCH_TIMEOUT_SECONDS
# The identity provider's clock and ours differ a little (another machine): without a margin, a token
# used the second it was issued by a clock 1 s ahead was refused ("iat" in the future), a 401 for a
# fresh, valid token. An expired token is accepted as long past its ``exp`` as well.
CLOCK_SKEW_SECONDS = 30
_REQUIRED_CLAIMS = ["sub", "iss", "aud", "exp", "iat", "token_use"]
_CUSTOMER_IDS: TypeAdapter[str] = TypeAdapter(CustomerId)


def _is_customer_id(subject: str) -> bool:
    try:
        _CUSTOMER_IDS.validate_python(subject)
    except ValidationError:
        return False
    return True


Clock = Callable[[], float]
Fetch = Callable[[], dict[str, PyJWK]]


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``subject`` is the stable user id (``sub``), the owner of their orders."""

    subject: str
    username: str
    groups: tuple[str, ...]
    is_admin: bool


def jwks_fetcher(url: str) -> Fetch:
    """Fetch and parse the signing keys at ``url`` (http or https) with PyJWT's ``PyJWKClient``."""
    try:
        # PyJWKClient's own cache is off: KeySet decides when to fetch, and serves stale keys.
        client = PyJWKClient(url, cache_jwk_set=False, timeout=FETCH_TIMEOUT_SECONDS)
    except PyJWTError as error:  # only http(s) URLs are accepted
        raise ValueError(f"unsupported JWKS URL: {url}") from error

    def fetch() -> dict[str, PyJWK]:
        return {key.key_id: key for key in client.get_signing_keys(refresh=True) if key.key_id}

    return fetch


class KeySet:
    """The issuer's public signing keys by ``kid``: fetched lazily, cached, served stale while refreshing.

    ``fetch`` returns the keys by ``kid`` (default: ``jwks_fetcher(url)``); ``clock`` is the
    monotonic clock of the cache, in seconds. Both are seams for tests: ``clock`` is a public
    attribute that may be replaced by a fake clock (before the first fetch, as every timestamp
    of the cache comes from it), so tests move time instead of sleeping.
    """

    def __init__(self, url: str, *, fetch: Fetch | None = None, clock: Clock = time.monotonic) -> None:
        self.url = url
        self.clock = clock
        self._fetch = fetch if fetch is not None else jwks_fetcher(url)
        # Guards the state below, never held across a fetch.
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None  # the last successful fetch
        self._attempted_at: float | None = None  # the last fetch started, successful or not
        self._failures = 0  # consecutive failed fetches
        self._retry_at: float | None = None  # no fetch before this after a failure
        self._refreshing = False
        self._last_error: BaseException | None = None

    def key(self, kid: str) -> PyJWK:
        """The key ``kid``; Unauthorized if the key set has no such key, TransientError without a usable set."""
        with self._lock:
            deadline = time.monotonic() + REFRESH_WAIT_SECONDS
            while True:
                now = self.clock()
                found = self._usable_key(kid, now)
                if self._refreshing:
                    if found is not None:
                        return found  # served (possibly stale) while another request refreshes
                    # Nothing to serve: the refresh in flight may bring the key, wait for it.
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TransientError("the identity provider's signing keys are unavailable")
                    self._settled.wait(remaining)
                    continue
                if not self._should_fetch(found, now):
                    return self._answer(found, now)
                self._refreshing = True
                self._attempted_at = now
                break
        self._refresh()
        with self._lock:
            now = self.clock()
            return self._answer(self._usable_key(kid, now), now)

    def _usable(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < MAX_STALENESS_SECONDS

    def _usable_key(self, kid: str, now: float) -> PyJWK | None:
        return self._keys.get(kid) if self._usable(now) else None

    def _should_fetch(self, found: PyJWK | None, now: float) -> bool:
        if self._retry_at is not None and now < self._retry_at:
            return False  # backing off after a failed fetch
        if self._fetched_at is None or now - self._fetched_at >= KEYS_FRESH_SECONDS:
            return True  # nothing cached yet, or stale
        # An unknown kid may be a rotated key: refetch, but at most once per cooldown.
        return found is None and (
            self._attempted_at is None or now - self._attempted_at >= UNKNOWN_KID_COOLDOWN_SECONDS
        )

    def _answer(self, found: PyJWK | None, now: float) -> PyJWK:
        if found is not None:
            return found
        if not self._usable(now):
            # Not the caller's fault: the keys are unreachable, so the token cannot be checked yet.
            raise TransientError("the identity provider's signing keys are unavailable") from self._last_error
        raise Unauthorized("the token was not signed by a known key")

    def _refresh(self) -> None:
        """One fetch, outside the lock; its outcome is recorded under the lock and waiters woken."""
        keys: dict[str, PyJWK] | None = None
        error: BaseException | None = None
        delay = 0.0
        try:
            keys = self._fetch()
        except (OSError, ValueError, PyJWTError) as failure:  # URLError and timeouts are OSErrors
            error = failure
        finally:
            with self._lock:
                now = self.clock()
                if keys:
                    self._keys = keys
                    self._fetched_at = now
                    self._failures = 0
                    self._retry_at = None
                    self._last_error = None
                else:
                    self._failures += 1
                    delay = min(RETRY_INITIAL_SECONDS * 2 ** min(self._failures - 1, 32), RETRY_MAX_SECONDS)
                    self._retry_at = now + delay
                    self._last_error = error
                self._refreshing = False
                self._settled.notify_all()
        if not keys:
            logger().warning(
                "could not refresh the signing keys",
                extra={"jwks_url": self.url, "error": repr(error) if error else "no signing keys", "retry_in": delay},
            )


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
            leeway=CLOCK_SKEW_SECONDS,
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
    if not isinstance(subject, str) or not _is_customer_id(subject) or not isinstance(username, str):
        # The subject is the owner of orders and carts: one the order models refuse (a custom identity
        # provider's "sub" with a space, say) was stored by POST /orders and then refused by every saga step.
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
