"""Saga compensation: release the authorization; a no-op when nothing is authorized or it is already voided."""

from __future__ import annotations

from typing import Any

from shop.domain.payments import void_payment
from shop.models.base import parse_event
from shop.models.payments import VoidPayment
from shop.observability import instrumented


@instrumented
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return void_payment(parse_event(VoidPayment, event)).model_dump(mode="json")
