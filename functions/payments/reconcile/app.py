"""Saga step: bring the payments ledger in line with the provider (an ambiguous outcome is looked
up by its idempotency key, never assumed) and say whether the payment is captured."""

from __future__ import annotations

from typing import Any

from shop.domain.payments import reconcile_payment
from shop.models.base import parse_event
from shop.models.payments import ReconcilePayment
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return reconcile_payment(parse_event(ReconcilePayment, event)).model_dump(mode="json")
