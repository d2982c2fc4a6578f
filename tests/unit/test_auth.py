"""Bearer token verification (shop.auth) against the dev identity provider's real RS256 tokens.

The key cache's tests point shop.auth at a JWKS server of their own (``keys``), fail or hold it
through ``DevIdentityProvider.jwks_hook``, count the requests it received and move the cache's
clock (``KeySet.clock``) instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest

from infra.local.identity import KEY_ID, DevIdentityProvider
from shop import auth, config
from shop.errors import Forbidden, TransientError, Unauthorized
from tests.conftest import FakeClock


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], None]]:
    """Point shop.auth at an issuer/audience, with fresh settings and key caches (reset afterwards too)."""

    def point_at(issuer: str, audience: str) -> None:
        monkeypatch.setenv("AUTH_ISSUER", issuer)
        monkeypatch.setenv("AUTH_AUDIENCE", audience)
        config.reset_settings_cache()
        auth.key_set.cache_clear()

    yield point_at
    config.reset_settings_cache()
    auth.key_set.cache_clear()


@pytest.fixture
def verifier(identity: DevIdentityProvider, configure: Callable[[str, str], None]) -> DevIdentityProvider:
    configure(identity.issuer, identity.audience)
    return identity


def test_a_valid_token_gives_its_principal(verifier: DevIdentityProvider) -> None:
    principal = auth.authenticate(f"Bearer {verifier.token('alice')}")
    assert principal == auth.Principal(subject="alice", username="alice", groups=(), is_admin=False)


def test_the_admin_group_makes_an_admin(verifier: DevIdentityProvider) -> None:
    principal = auth.authenticate_admin(f"Bearer {verifier.token('root', groups=['admin', 'ops'])}")
    assert principal.is_admin and principal.groups == ("admin", "ops")


def test_a_customer_on_an_admin_route_is_forbidden(verifier: DevIdentityProvider) -> None:
    with pytest.raises(Forbidden):
        auth.authenticate_admin(f"Bearer {verifier.token('alice', groups=['staff'])}")


def test_the_scheme_is_case_insensitive(verifier: DevIdentityProvider) -> None:
    assert auth.authenticate(f"bearer {verifier.token('alice')}").subject == "alice"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic YWxpY2U6c2VjcmV0", "Token abc", "Bearer a b"])
def test_missing_or_malformed_headers_are_unauthorized(verifier: DevIdentityProvider, header: str | None) -> None:
    with pytest.raises(Unauthorized):
        auth.authenticate(header)


def test_optional_principal_is_none_without_a_header_but_checks_a_sent_token(verifier: DevIdentityProvider) -> None:
    assert auth.authenticate_optional(None) is None
    with pytest.raises(Unauthorized):
        auth.authenticate_optional("Bearer not-a-jwt")


def test_an_expired_token_is_unauthorized(verifier: DevIdentityProvider) -> None:
    with pytest.raises(Unauthorized, match="expired"):
        auth.verify(verifier.token("alice", expires_in=-120))


def _issued_by_another_clock(identity: DevIdentityProvider, skew: int, lifetime: int = 3600) -> str:
    issued = int(time.time()) + skew
    claims = {
        "sub": "alice",
        "cognito:username": "alice",
        "token_use": "id",
        "iss": identity.issuer,
        "aud": identity.audience,
        "iat": issued,
        "auth_time": issued,
        "exp": issued + lifetime,
    }
    return jwt.encode(claims, identity.private_key_pem, algorithm="RS256", headers={"kid": KEY_ID})


@pytest.mark.parametrize("skew", [2, 25])
def test_a_token_from_an_issuer_whose_clock_is_seconds_ahead_is_valid(verifier: DevIdentityProvider, skew: int) -> None:
    # Refused as "not yet valid" before (a helper's clock probe): Cognito is another machine than the API's.
    assert auth.verify(_issued_by_another_clock(verifier, skew)).subject == "alice"


def test_the_clock_margin_is_bounded(verifier: DevIdentityProvider) -> None:
    with pytest.raises(Unauthorized):
        auth.verify(_issued_by_another_clock(verifier, 3 * auth.CLOCK_SKEW_SECONDS))
    with pytest.raises(Unauthorized, match="expired"):
        auth.verify(_issued_by_another_clock(verifier, -3600 - 2 * auth.CLOCK_SKEW_SECONDS))


def test_a_token_for_another_audience_is_unauthorized(verifier: DevIdentityProvider) -> None:
    with pytest.raises(Unauthorized):
        auth.verify(verifier.token("alice", audience="some-other-app-client"))


def test_a_token_from_another_issuer_is_unauthorized(verifier: DevIdentityProvider) -> None:
    with pytest.raises(Unauthorized):
        auth.verify(verifier.token("alice", issuer="https://cognito-idp.us-east-1.amazonaws.com/us-east-1_evil"))


def test_a_token_signed_by_another_key_with_the_same_kid_is_unauthorized(
    verifier: DevIdentityProvider, tmp_path: Path
) -> None:
    forger = DevIdentityProvider.create(tmp_path / "forger")
    forged = forger.token("root", groups=["admin"], issuer=verifier.issuer, audience=verifier.audience)
    assert jwt.get_unverified_header(forged)["kid"] == KEY_ID
    with pytest.raises(Unauthorized):
        auth.verify(forged)


def test_a_token_with_an_unknown_kid_is_unauthorized(verifier: DevIdentityProvider) -> None:
    claims = jwt.decode(verifier.token("alice"), options={"verify_signature": False})
    token = jwt.encode(claims, verifier.private_key_pem, algorithm="RS256", headers={"kid": "rotated-away"})
    with pytest.raises(Unauthorized):
        auth.verify(token)


def test_unsigned_and_symmetric_tokens_are_unauthorized(verifier: DevIdentityProvider) -> None:
    claims = jwt.decode(verifier.token("root", groups=["admin"]), options={"verify_signature": False})
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": KEY_ID})
    # Only RS256 is accepted: an HMAC-signed token (any shared secret) must not pass.
    symmetric = jwt.encode(claims, b"a-shared-secret-of-at-least-32-bytes!", algorithm="HS256", headers={"kid": KEY_ID})
    for token in (unsigned, symmetric):
        with pytest.raises(Unauthorized):
            auth.verify(token)


def test_an_access_token_is_not_an_id_token(verifier: DevIdentityProvider) -> None:
    claims = jwt.decode(verifier.token("alice"), options={"verify_signature": False})
    claims["token_use"] = "access"
    token = jwt.encode(claims, verifier.private_key_pem, algorithm="RS256", headers={"kid": KEY_ID})
    with pytest.raises(Unauthorized):
        auth.verify(token)


def test_a_token_without_required_claims_is_unauthorized(verifier: DevIdentityProvider) -> None:
    claims = jwt.decode(verifier.token("alice"), options={"verify_signature": False})
    del claims["token_use"]
    token = jwt.encode(claims, verifier.private_key_pem, algorithm="RS256", headers={"kid": KEY_ID})
    with pytest.raises(Unauthorized):
        auth.verify(token)


def test_malformed_groups_are_unauthorized(verifier: DevIdentityProvider) -> None:
    claims = jwt.decode(verifier.token("alice"), options={"verify_signature": False})
    claims["cognito:groups"] = "admin"
    token = jwt.encode(claims, verifier.private_key_pem, algorithm="RS256", headers={"kid": KEY_ID})
    with pytest.raises(Unauthorized):
        auth.verify(token)


@pytest.mark.parametrize("garbage", ["not-a-jwt", "a.b.c", "e30.e30.e30", "x" * 5000])
def test_garbage_is_unauthorized(verifier: DevIdentityProvider, garbage: str) -> None:
    with pytest.raises(Unauthorized):
        auth.verify(garbage)


# ---------------------------------------------------------------------------- the signing keys' cache


@dataclass
class Keys:
    """A JWKS server of its own (the session's key, another port) that shop.auth is pointed at."""

    provider: DevIdentityProvider
    clock: FakeClock

    def token(self, username: str = "alice") -> str:
        return self.provider.token(username)

    def fail_with(self, status: int) -> None:
        self.provider.jwks_hook = lambda: status

    def recover(self) -> None:
        self.provider.jwks_hook = None

    @property
    def fetches(self) -> int:
        """JWKS requests the server received."""
        return self.provider.jwks_requests


@pytest.fixture
def keys(identity: DevIdentityProvider, configure: Callable[[str, str], None]) -> Iterator[Keys]:
    provider = DevIdentityProvider(directory=identity.directory, private_key_pem=identity.private_key_pem)
    provider.serve()
    configure(provider.issuer, provider.audience)
    clock = FakeClock()
    auth.key_set(config.auth_settings().jwks_url).clock = clock
    yield Keys(provider, clock)
    provider.close()


def test_the_key_set_is_fetched_once_and_cached(keys: Keys) -> None:
    assert auth.verify(keys.token("alice")).subject == "alice"
    keys.clock.advance(auth.KEYS_FRESH_SECONDS - 1)
    assert auth.verify(keys.token("bob")).subject == "bob"
    assert keys.fetches == 1


def test_fresh_keys_are_fetched_again_after_the_fresh_period(keys: Keys) -> None:
    auth.verify(keys.token())
    keys.clock.advance(auth.KEYS_FRESH_SECONDS)
    auth.verify(keys.token())
    auth.verify(keys.token())
    assert keys.fetches == 2


@pytest.mark.parametrize("outage", ["500", "closed"])
def test_a_stale_key_is_still_accepted_while_the_endpoint_is_down(keys: Keys, outage: str) -> None:
    token = keys.token()
    auth.verify(token)
    if outage == "closed":
        keys.provider.close()
    else:
        keys.fail_with(500)
    keys.clock.advance(auth.KEYS_FRESH_SECONDS + 1)

    assert auth.verify(token).subject == "alice"
    # Still accepted just before the maximum staleness, whatever the backoff does meanwhile.
    keys.clock.advance(auth.MAX_STALENESS_SECONDS - auth.KEYS_FRESH_SECONDS - 2)
    assert auth.verify(token).subject == "alice"
    if outage == "500":
        assert keys.fetches >= 2  # each time, a refresh was attempted (and failed)


def test_beyond_the_maximum_staleness_the_keys_are_a_transient_server_error(keys: Keys) -> None:
    token = keys.token()
    auth.verify(token)
    keys.fail_with(500)
    keys.clock.advance(auth.MAX_STALENESS_SECONDS)
    with pytest.raises(TransientError):
        auth.verify(token)
    # Once the provider answers again, the keys are refreshed (after the backoff) and tokens pass.
    keys.recover()
    keys.clock.advance(auth.RETRY_INITIAL_SECONDS)
    assert auth.verify(token).subject == "alice"


def test_failed_refreshes_back_off_exponentially_up_to_a_cap(keys: Keys) -> None:
    token = keys.token()
    auth.verify(token)
    keys.fail_with(500)
    keys.clock.advance(auth.KEYS_FRESH_SECONDS)
    auth.verify(token)
    assert keys.fetches == 2  # the first refresh failed

    delay = auth.RETRY_INITIAL_SECONDS
    for _ in range(8):
        before = keys.fetches
        keys.clock.advance(delay - 0.5)
        for _ in range(10):
            assert auth.verify(token).subject == "alice"
        assert keys.fetches == before, "a request within the backoff fetched again"
        keys.clock.advance(0.5)
        auth.verify(token)
        assert keys.fetches == before + 1, "no retry once the backoff was over"
        delay = min(delay * 2, auth.RETRY_MAX_SECONDS)
    assert delay == auth.RETRY_MAX_SECONDS  # the loop did reach the cap (5, 10, ..., 300)

    keys.recover()
    keys.clock.advance(auth.RETRY_MAX_SECONDS)
    auth.verify(token)
    fetched = keys.fetches
    keys.clock.advance(auth.KEYS_FRESH_SECONDS - 1)
    auth.verify(token)
    assert keys.fetches == fetched  # fresh again: no backoff left over, no fetch


def test_an_unreachable_key_set_with_nothing_cached_is_a_transient_error_and_backs_off(keys: Keys) -> None:
    keys.fail_with(503)
    for _ in range(3):
        with pytest.raises(TransientError):
            auth.verify(keys.token())
    assert keys.fetches == 1
    keys.recover()
    keys.clock.advance(auth.RETRY_INITIAL_SECONDS)
    assert auth.verify(keys.token()).subject == "alice"
    assert keys.fetches == 2


def test_an_unknown_kid_refetches_at_most_once_per_cooldown(keys: Keys) -> None:
    auth.verify(keys.token())
    claims = jwt.decode(keys.token(), options={"verify_signature": False})
    rotated = jwt.encode(claims, keys.provider.private_key_pem, algorithm="RS256", headers={"kid": "rotated"})
    for _ in range(5):
        with pytest.raises(Unauthorized):
            auth.verify(rotated)
    assert keys.fetches == 1  # the first fetch started the cooldown
    keys.clock.advance(auth.UNKNOWN_KID_COOLDOWN_SECONDS)
    for _ in range(5):
        with pytest.raises(Unauthorized):
            auth.verify(rotated)
    assert keys.fetches == 2


def test_the_lock_is_not_held_while_fetching(keys: Keys) -> None:
    token = keys.token()
    auth.verify(token)
    keys.clock.advance(auth.KEYS_FRESH_SECONDS)
    in_fetch, release = threading.Event(), threading.Event()

    def held() -> int:
        in_fetch.set()
        release.wait(30)
        return 200

    keys.provider.jwks_hook = held
    results: dict[str, str] = {}

    def verify_as(name: str) -> None:
        results[name] = auth.verify(keys.provider.token(name)).subject

    refresher = threading.Thread(target=verify_as, args=("refresher",))
    refresher.start()
    try:
        assert in_fetch.wait(10), "the refresh never reached the JWKS server"
        # While that refresh is blocked in the server, another request is answered from the cache.
        other = threading.Thread(target=verify_as, args=("other",))
        other.start()
        other.join(10)
        assert not other.is_alive(), "verify waited for the fetch in flight"
        assert results == {"other": "other"}
        assert refresher.is_alive()
    finally:
        release.set()
        refresher.join(10)
    assert results == {"other": "other", "refresher": "refresher"}
    assert keys.fetches == 2  # one refresh in flight at a time: the other request did not fetch


def test_with_nothing_cached_concurrent_requests_share_one_fetch(keys: Keys) -> None:
    in_fetch, release = threading.Event(), threading.Event()

    def held() -> int:
        in_fetch.set()
        release.wait(30)
        return 200

    keys.provider.jwks_hook = held
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(auth.verify(keys.token()).subject)) for _ in range(4)]
    threads[0].start()
    assert in_fetch.wait(10)
    for thread in threads[1:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert results == ["alice"] * 4
    assert keys.fetches == 1


@pytest.fixture
def serve_body() -> Iterator[Callable[[bytes], str]]:
    """An issuer whose JWKS URL answers 200 with the given body (whatever it is)."""
    servers: list[ThreadingHTTPServer] = []

    def serve(body: bytes) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "body",
    [
        b'{"not": "a key set"}',
        b"not json",
        b"[]",
        b'{"keys": []}',
        b'{"keys": [{"kty": "RSA", "kid": "k", "use": "enc", "n": "AQAB", "e": "AQAB"}]}',
    ],
)
def test_an_unusable_key_set_is_a_transient_server_error_not_a_401(
    body: bytes, serve_body: Callable[[bytes], str], configure: Callable[[str, str], None]
) -> None:
    configure(serve_body(body), "client")
    with pytest.raises(TransientError):
        auth.key_set(config.auth_settings().jwks_url).key(KEY_ID)


def test_an_unreachable_key_set_is_a_transient_server_error(keys: Keys) -> None:
    keys.provider.close()
    with pytest.raises(TransientError):
        auth.key_set(config.auth_settings().jwks_url).key(KEY_ID)


def test_only_http_key_set_urls_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported JWKS URL"):
        auth.KeySet((tmp_path / ".well-known" / "jwks.json").as_uri())


def test_a_cognito_provider_url_without_scheme_is_its_https_issuer(configure: Callable[[str, str], None]) -> None:
    configure("cognito-idp.us-east-1.amazonaws.com/us-east-1_abc", "client")
    settings = config.auth_settings()
    assert settings.auth_issuer == "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_abc"
    assert settings.jwks_url == "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_abc/.well-known/jwks.json"


@pytest.mark.parametrize("subject", ["alice smith", "a" * 129, "ålice", ""])
def test_a_subject_no_order_could_be_stored_under_is_unauthorized(verifier: DevIdentityProvider, subject: str) -> None:
    """A custom identity provider's "sub" (Cognito's is a UUID): POST /orders stored the order, and every saga step
    then refused its customer id, so it was cancelled INVENTORY_UNAVAILABLE."""
    claims = jwt.decode(verifier.token("alice"), options={"verify_signature": False})
    claims["sub"] = subject
    token = jwt.encode(claims, verifier.private_key_pem, algorithm="RS256", headers={"kid": KEY_ID})
    with pytest.raises(Unauthorized):
        auth.verify(token)


# ---------------------------------------------------------------------------- a second mutation run's pins
def test_a_refresh_that_brings_no_usable_key_keeps_the_cached_keys_and_backs_off() -> None:
    """A key set with no key that has a ``kid`` (an empty set, to ``fetch``) is a failed refresh:
    the keys cached before are still served, and the retry waits for the backoff. Read as a success,
    it replaced the good keys with none and every token was a 401 until the next refresh."""
    key: Any = object()
    answers: list[dict[str, Any]] = [{"k1": key}, {}, {}]
    fetched: list[int] = []

    def fetch() -> dict[str, Any]:
        fetched.append(1)
        return answers.pop(0)

    clock = FakeClock()
    keys = auth.KeySet("http://issuer.invalid/.well-known/jwks.json", fetch=fetch, clock=clock)
    assert keys.key("k1") is key
    clock.advance(auth.KEYS_FRESH_SECONDS)

    assert keys.key("k1") is key  # the refresh brought nothing usable: the stale key is served
    assert keys.key("k1") is key  # and no fetch before the backoff
    assert len(fetched) == 2


def test_with_nothing_cached_a_key_set_without_usable_keys_is_a_transient_error_not_a_401() -> None:
    clock = FakeClock()
    keys = auth.KeySet("http://issuer.invalid/.well-known/jwks.json", fetch=dict, clock=clock)
    with pytest.raises(TransientError):
        keys.key("k1")
    try:
        keys.key("k1")
    except Unauthorized:
        pytest.fail("an empty key set was taken for a good one")
    except TransientError:
        pass


def _resigned(verifier: DevIdentityProvider, **changes: Any) -> str:
    claims = jwt.decode(verifier.token("alice"), options={"verify_signature": False})
    for name, value in changes.items():
        name = name.replace("__", ":")
        if value is None:
            del claims[name]
        else:
            claims[name] = value
    return jwt.encode(claims, verifier.private_key_pem, algorithm="RS256", headers={"kid": KEY_ID})


@pytest.mark.parametrize("groups", [["admin", 7], [["admin"]], [None]])
def test_groups_that_are_not_all_strings_are_unauthorized(verifier: DevIdentityProvider, groups: list[Any]) -> None:
    """Only the list was checked, not its members."""
    with pytest.raises(Unauthorized):
        auth.verify(_resigned(verifier, cognito__groups=groups))


def test_the_username_is_cognitos_not_the_subject(verifier: DevIdentityProvider) -> None:
    """On Cognito ``sub`` is a UUID and ``cognito:username`` the name; the dev provider makes them equal."""
    subject = "6f1c2f1e-8d3b-4b8e-9a51-0c6c1f2b9d11"
    principal = auth.verify(_resigned(verifier, sub=subject))
    assert (principal.subject, principal.username) == (subject, "alice")


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_a_token_without_an_expiry_or_issue_time_is_unauthorized(verifier: DevIdentityProvider, claim: str) -> None:
    """Without ``exp`` required, a signed token without one never expires."""
    with pytest.raises(Unauthorized):
        auth.verify(_resigned(verifier, **{claim: None}))
