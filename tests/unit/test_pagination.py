"""Signed pagination tokens (shop.pagination): round trip, and every way a token can be wrong."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from itsdangerous import URLSafeSerializer
from pydantic import ValidationError

from shop import aws, config, signing
from shop.errors import FieldError
from shop.models.base import StrictModel
from shop.models.common import NextToken, PageLimit
from shop.pagination import decode_token, encode_token
from shop.repositories import secrets

SECRET = "unit-test-pagination-secret-" + "y" * 16
KEY = {"listing": {"S": "ACTIVE"}, "sku": {"S": "SKU-0042"}}


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The key's source (Secrets Manager) is tested below; these tests are about the tokens.
    monkeypatch.setattr(signing, "pagination_key", lambda: SECRET)
    yield


def _signed(payload: object, secret: str = SECRET) -> str:
    serializer = URLSafeSerializer(
        secret, salt="shop.pagination.products", signer_kwargs={"digest_method": hashlib.sha256}
    )
    return serializer.dumps(payload)


def _bad(listing: str, token: str, binding: dict[str, str | None]) -> FieldError:
    with pytest.raises(FieldError) as raised:
        decode_token(listing, token, binding)
    assert raised.value.status == 400
    assert raised.value.errors[0]["field"] == "next_token"
    return raised.value


def test_a_token_round_trips_the_key() -> None:
    token = encode_token("products", KEY, {"category": None})
    assert token is not None
    assert decode_token("products", token, {"category": None}) == KEY


def test_no_last_key_means_no_token_and_no_token_means_no_start() -> None:
    assert encode_token("products", None, {"category": None}) is None
    assert encode_token("products", {}, {"category": None}) is None
    assert decode_token("products", None, {"category": None}) is None


@pytest.mark.parametrize("position", [0, 10, -5, -10])
def test_an_altered_token_is_rejected(position: int) -> None:
    # (Not the last character: its low bits are base64 padding and may not change the bytes.)
    token = encode_token("products", KEY, {"category": None})
    assert token is not None
    index = position % len(token)
    flipped = "A" if token[index] not in "AB" else ("C" if token[index] == "A" else "D")
    _bad("products", token[:index] + flipped + token[index + 1 :], {"category": None})


def test_a_token_with_a_swapped_payload_is_rejected() -> None:
    token = encode_token("products", KEY, {"category": None})
    other = encode_token("products", {"listing": {"S": "ACTIVE"}, "sku": {"S": "ZZZ"}}, {"category": None})
    assert token is not None and other is not None
    _bad("products", other.split(".")[0] + "." + token.split(".")[1], {"category": None})


def test_a_token_for_another_query_is_rejected() -> None:
    token = encode_token("products", {"listing_category": {"S": "books"}, "sku": {"S": "B-1"}}, {"category": "books"})
    assert token is not None
    _bad("products", token, {"category": "games"})
    _bad("products", token, {"category": None})


def test_a_token_of_another_listing_is_rejected() -> None:
    token = encode_token("orders", KEY, {"category": None})
    assert token is not None
    _bad("products", token, {"category": None})


def test_a_token_signed_with_another_secret_is_rejected() -> None:
    forged = _signed({"k": KEY, "q": {"category": None}}, secret="someone-elses-secret-" + "z" * 16)
    _bad("products", forged, {"category": None})


@pytest.mark.parametrize(
    "payload",
    [
        {"k": "sku", "q": {"category": None}},
        {"k": {}, "q": {"category": None}},
        {"k": {"sku": {"BOOL": True}}, "q": {"category": None}},
        ["k"],
    ],
)
def test_a_signed_but_malformed_payload_is_rejected(payload: object) -> None:
    # Only a leaked secret could produce these; they must still be a 400, never a DynamoDB error.
    _bad("products", _signed(payload), {"category": None})


@pytest.mark.parametrize("garbage", ["x", "....", "eyJrIjp7fX0", "%00", "a" * 2000])
def test_garbage_is_rejected(garbage: str) -> None:
    _bad("products", garbage, {"category": None})


class _Query(StrictModel):
    limit: PageLimit = 20
    next_token: NextToken | None = None


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("20", 20), ("100", 100), ("007", 7)])
def test_page_limit_accepts_plain_digits(raw: str, expected: int) -> None:
    assert _Query.model_validate({"limit": raw}).limit == expected


@pytest.mark.parametrize(
    "raw", ["0", "101", "-1", "+5", " 5", "5 ", "1_0", "2.0", "1e1", "0x10", "", "٣", "9" * 30, True, 5.0]
)
def test_page_limit_rejects_everything_else(raw: object) -> None:
    with pytest.raises(ValidationError):
        _Query.model_validate({"limit": raw})


def test_next_token_is_bounded() -> None:
    with pytest.raises(ValidationError):
        _Query.model_validate({"next_token": ""})
    with pytest.raises(ValidationError):
        _Query.model_validate({"next_token": "a" * 2049})


def test_the_key_is_read_from_secrets_manager_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        manager = boto3.client("secretsmanager")
        arn = manager.create_secret(Name="pagination", SecretString=SECRET)["ARN"]
        monkeypatch.setenv("PAGINATION_SECRET_ARN", arn)
        config.reset_settings_cache()
        aws.reset_clients()
        try:
            assert secrets.pagination_key() == SECRET
            # A rotated key is picked up once the cached value is older than max_age, not per call.
            manager.put_secret_value(SecretId=arn, SecretString="rotated-" + SECRET)
            assert secrets.pagination_key() == SECRET
        finally:
            config.reset_settings_cache()
            aws.reset_clients()
