"""Order request validation and the order id derived from (caller, key, body)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shop.domain.orders import order_id_for
from shop.errors import FieldError
from shop.models.base import parse_event
from shop.models.orders import PlaceOrderRequest, RecordProgress


def _request(**changes: object) -> dict[str, object]:
    return {"items": [{"sku": "MUG-1", "quantity": 1}], "payment": {"token": "tok_visa"}, **changes}


def test_a_valid_request_parses() -> None:
    request = PlaceOrderRequest.model_validate(_request())
    assert request.items is not None and request.items[0].quantity == 1 and request.payment.token == "tok_visa"


@pytest.mark.parametrize(
    "changes",
    [
        {"items": [{"sku": "MUG-1", "quantity": 1}, {"sku": "MUG-1", "quantity": 1}]},
        {"items": [{"sku": "MUG-1", "quantity": 1.0}]},
        {"items": [{"sku": "MUG-1", "quantity": True}]},
        {"items": [{"sku": "M" * 65, "quantity": 1}]},
        {"payment": {"token": "tok visa"}},
        {"payment": {"token": "t" * 256}},
        {"coupon": "FREE"},
    ],
)
def test_invalid_requests_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PlaceOrderRequest.model_validate(_request(**changes))


def test_order_id_depends_on_caller_key_and_body() -> None:
    body = _request()
    same = order_id_for("alice", "k1", dict(body))
    assert same == order_id_for("alice", "k1", body)
    assert same != order_id_for("bob", "k1", body)
    assert same != order_id_for("alice", "k2", body)
    assert same != order_id_for("alice", "k1", _request(payment={"token": "tok_flaky"}))


def test_step_events_are_strict() -> None:
    with pytest.raises(FieldError) as raised:
        parse_event(RecordProgress, {"order_id": "o-1", "step": "ship_it"})
    assert raised.value.errors[0]["field"] == "step"
    with pytest.raises(FieldError):
        parse_event(RecordProgress, {"order_id": "o-1", "step": "reserve_stock", "surprise": 1})
