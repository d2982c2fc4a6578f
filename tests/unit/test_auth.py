"""Bearer token verification (shop.auth) against the dev identity provider's real RS256 tokens."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest

from infra.local.identity import KEY_ID, DevIdentityProvider
from shop import auth, config
from shop.errors import Forbidden, TransientError, Unauthorized


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
        auth.verify(verifier.token("alice", expires_in=-60))


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


def test_the_key_set_is_fetched_once_and_cached(tmp_path: Path, configure: Callable[[str, str], None]) -> None:
    provider = DevIdentityProvider.create(tmp_path / "idp")
    configure(provider.issuer, provider.audience)
    assert auth.verify(provider.token("alice")).subject == "alice"
    (tmp_path / "idp" / ".well-known" / "jwks.json").unlink()
    assert auth.verify(provider.token("bob")).subject == "bob"


def test_an_unusable_key_set_is_a_transient_server_error_not_a_401(
    tmp_path: Path, configure: Callable[[str, str], None]
) -> None:
    provider = DevIdentityProvider.create(tmp_path / "idp")
    (tmp_path / "idp" / ".well-known" / "jwks.json").write_text(json.dumps({"not": "a key set"}))
    configure(provider.issuer, provider.audience)
    with pytest.raises(TransientError):
        auth.verify(provider.token("alice"))


def test_an_unreachable_key_set_is_a_transient_server_error(
    tmp_path: Path, configure: Callable[[str, str], None]
) -> None:
    configure((tmp_path / "nowhere").as_uri(), "client")
    with pytest.raises(TransientError):
        auth.key_set(config.auth_settings().jwks_url).key(KEY_ID)


def test_a_cognito_provider_url_without_scheme_is_its_https_issuer(configure: Callable[[str, str], None]) -> None:
    configure("cognito-idp.us-east-1.amazonaws.com/us-east-1_abc", "client")
    settings = config.auth_settings()
    assert settings.auth_issuer == "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_abc"
    assert settings.jwks_url == "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_abc/.well-known/jwks.json"
