"""Signing keys through the API: an outage of the identity provider's JWKS endpoint after the keys'
fresh period does not turn valid tokens away (stale-while-revalidate), up to the maximum staleness.

The key cache's clock is replaced by a fake one through its documented hook (``KeySet.clock``),
and the dev identity provider's JWKS endpoint answers 503 through ``jwks_hook``: no sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chalice.test import Client

from app import app
from shop import auth, config
from tests.conftest import FakeClock, LocalAws


@pytest.fixture
def clock(local_aws: LocalAws) -> Iterator[FakeClock]:
    """A fresh key cache for the API's issuer, on a fake clock (dropped afterwards)."""
    auth.key_set.cache_clear()
    fake = FakeClock()
    auth.key_set(config.auth_settings().jwks_url).clock = fake
    yield fake
    auth.key_set.cache_clear()


def test_a_valid_token_is_accepted_while_the_jwks_endpoint_is_down_after_the_fresh_period(
    local_aws: LocalAws, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = local_aws.identity
    headers = {"Authorization": f"Bearer {identity.token('alice')}"}
    # The packaged stage: dev's variables are chalice local's (.chalice/config.json).
    with Client(app, stage_name="prod") as client:
        assert client.http.get("/orders", headers=headers).status_code == 200
        fetched = identity.jwks_requests

        monkeypatch.setattr(identity, "jwks_hook", lambda: 503)
        clock.advance(auth.KEYS_FRESH_SECONDS + 1)
        stale = client.http.get("/orders", headers=headers)
        assert stale.status_code == 200, stale.body
        assert stale.json_body["items"] == []
        assert identity.jwks_requests == fetched + 1  # a refresh was attempted, and failed

        # Within the backoff, requests are answered from the cache without asking the provider.
        for _ in range(3):
            assert client.http.get("/orders", headers=headers).status_code == 200
        assert identity.jwks_requests == fetched + 1

        # Beyond the maximum staleness the token cannot be checked any more: 503, not 401.
        clock.advance(auth.MAX_STALENESS_SECONDS)
        expired = client.http.get("/orders", headers=headers)
        assert expired.status_code == 503
        assert expired.headers["Content-Type"] == "application/problem+json"

        # The provider is back: after the backoff the keys are refreshed and the token passes again.
        monkeypatch.setattr(identity, "jwks_hook", None)
        clock.advance(auth.RETRY_MAX_SECONDS)
        assert client.http.get("/orders", headers=headers).status_code == 200
