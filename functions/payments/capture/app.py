"""Saga step: capture the authorized payment. CheckoutCancelled (a customer's cancel before it) leads
to the void; anything else that survives its retries (a capture above the authorization, a payment in
another state) to the reconciliation of the capture (``States.ALL``)."""

from __future__ import annotations

from typing import Any

from shop.domain.payments import capture_payment
from shop.models.base import parse_event
from shop.models.payments import CapturePayment
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return capture_payment(parse_event(CapturePayment, event)).model_dump(mode="json")
