"""Saga step: authorize the order's payment (PaymentDeclined, PaymentProviderError, CircuitOpen)."""

from __future__ import annotations

from typing import Any

from shop.domain.payments import authorize_payment
from shop.models.base import parse_event
from shop.models.payments import AuthorizePayment
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return authorize_payment(parse_event(AuthorizePayment, event)).model_dump(mode="json")
