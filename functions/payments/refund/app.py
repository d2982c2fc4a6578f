"""Saga step: refund part or (amount null) all of what is captured and not yet refunded. A refund above
the capture (RefundExceedsCapture) is caught with every other failure (``States.ALL``): the order is flagged."""

from __future__ import annotations

from typing import Any

from shop.domain.payments import refund_payment
from shop.models.base import parse_event
from shop.models.payments import RefundPayment
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return refund_payment(parse_event(RefundPayment, event)).model_dump(mode="json")
