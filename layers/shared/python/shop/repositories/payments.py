"""The payments ledger: one item per order in PaymentsTable.

Every transition is one conditional UpdateItem, so DynamoDB itself enforces the invariants
(captured <= authorized, refunded <= captured, one capture, no capture after a void) and a
repeated transition is recognised instead of applied twice. A transition whose condition fails
returns the item as it was (``ReturnValuesOnConditionCheckFailure``) so the caller decides
without a second read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shop.config import table_settings
from shop.errors import PaymentRecordsContention
from shop.models.base import iso_now
from shop.models.money import Currency
from shop.models.payments import Payment
from shop.repositories.dynamodb import call, is_condition_failure, serialize, unmarshal


@dataclass(frozen=True)
class Transition:
    """``applied``: the update happened and ``payment`` is the new item. Otherwise its condition
    failed and ``payment`` is the item as it stood (None if there was none)."""

    applied: bool
    payment: Payment | None


def to_payment(item: Mapping[str, Any]) -> Payment:
    return Payment.model_validate(unmarshal(item))


class PaymentsRepository:
    def _table(self) -> str:
        return table_settings().payments_table

    def get(self, order_id: str) -> Payment | None:
        response = call(
            "get_item",
            busy=PaymentRecordsContention,
            TableName=self._table(),
            Key={"order_id": {"S": order_id}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return to_payment(item) if item else None

    def begin_authorization(self, order_id: str, currency: Currency, provider: str) -> Transition:
        """Create the PENDING item (or keep it PENDING) and count the attempt.

        Fails, changing nothing, once the payment has an outcome.
        """
        now = iso_now()
        return self._update(
            order_id,
            "SET #status = if_not_exists(#status, :pending), currency = :currency, provider = :provider, "
            "authorized_amount = if_not_exists(authorized_amount, :zero), "
            "captured_amount = if_not_exists(captured_amount, :zero), "
            "refunded_amount = if_not_exists(refunded_amount, :zero), "
            "refunds = if_not_exists(refunds, :empty), "
            "created_at = if_not_exists(created_at, :now), updated_at = :now "
            "ADD attempts :one",
            "attribute_not_exists(order_id) OR #status = :pending",
            {
                ":pending": "PENDING",
                ":currency": currency,
                ":provider": provider,
                ":zero": 0,
                ":empty": {},
                ":now": now,
                ":one": 1,
            },
        )

    def mark_authorized(self, order_id: str, amount: int, authorization_ref: str) -> Transition:
        return self._update(
            order_id,
            "SET #status = :authorized, authorized_amount = :amount, authorization_ref = :ref, updated_at = :now",
            "#status = :pending",
            {":authorized": "AUTHORIZED", ":pending": "PENDING", ":amount": amount, ":ref": authorization_ref},
        )

    def mark_declined(self, order_id: str, decline_code: str) -> Transition:
        return self._update(
            order_id,
            "SET #status = :declined, decline_code = :code, updated_at = :now",
            "#status = :pending",
            {":declined": "DECLINED", ":pending": "PENDING", ":code": decline_code},
        )

    def void_unauthorized(self, order_id: str, provider: str) -> Transition:
        """Close a payment that has no authorization (none yet, or none ever) as VOIDED.

        A late authorization of the same order then finds VOIDED and must release its hold.
        """
        now = iso_now()
        return self._update(
            order_id,
            "SET #status = :voided, provider = if_not_exists(provider, :provider), "
            "currency = if_not_exists(currency, :currency), "
            "authorized_amount = if_not_exists(authorized_amount, :zero), "
            "captured_amount = if_not_exists(captured_amount, :zero), "
            "refunded_amount = if_not_exists(refunded_amount, :zero), "
            "refunds = if_not_exists(refunds, :empty), attempts = if_not_exists(attempts, :zero), "
            "created_at = if_not_exists(created_at, :now), updated_at = :now",
            "attribute_not_exists(order_id) OR #status = :pending",
            {
                ":voided": "VOIDED",
                ":pending": "PENDING",
                ":provider": provider,
                ":currency": "USD",
                ":zero": 0,
                ":empty": {},
                ":now": now,
            },
        )

    def mark_voided(self, order_id: str, void_ref: str) -> Transition:
        return self._update(
            order_id,
            "SET #status = :voided, void_ref = :ref, updated_at = :now",
            "#status = :authorized",
            {":voided": "VOIDED", ":authorized": "AUTHORIZED", ":ref": void_ref},
        )

    def mark_captured(self, order_id: str, amount: int, capture_ref: str) -> Transition:
        # ``authorized_amount >= :amount`` is the captured <= authorized invariant, in DynamoDB.
        return self._update(
            order_id,
            "SET #status = :captured, captured_amount = :amount, capture_ref = :ref, updated_at = :now",
            "#status = :authorized AND authorized_amount >= :amount",
            {":captured": "CAPTURED", ":authorized": "AUTHORIZED", ":amount": amount, ":ref": capture_ref},
        )

    def add_refund(
        self,
        order_id: str,
        *,
        idempotency_key: str,
        refund_ref: str,
        amount: int,
        expected_refunded: int,
        expected_captured: int,
    ) -> Transition:
        """Record one refund of ``amount`` on top of ``expected_refunded``.

        Condition expressions have no arithmetic, so the new total is computed here and DynamoDB
        checks it against the stored amounts: ``refunded_amount`` must still be the expected one
        (no concurrent refund slipped in) and ``captured_amount`` must cover the new total (the
        refunded <= captured invariant). The refund's key must not be recorded yet.
        """
        total = expected_refunded + amount
        status = "REFUNDED" if total == expected_captured else "PARTIALLY_REFUNDED"
        now = iso_now()
        return self._update(
            order_id,
            "SET #status = :status, refunded_amount = :total, refunds.#key = :entry, updated_at = :now",
            "#status IN (:captured_status, :partially) AND refunded_amount = :expected "
            "AND captured_amount = :captured AND captured_amount >= :total AND attribute_not_exists(refunds.#key)",
            {
                ":status": status,
                ":total": total,
                ":entry": {"ref": refund_ref, "amount": amount, "at": now},
                ":captured_status": "CAPTURED",
                ":partially": "PARTIALLY_REFUNDED",
                ":expected": expected_refunded,
                ":captured": expected_captured,
            },
            names={"#key": idempotency_key},
            now=now,
        )

    # ------------------------------------------------------------------ plumbing
    def _update(
        self,
        order_id: str,
        expression: str,
        condition: str,
        values: dict[str, Any],
        *,
        names: dict[str, str] | None = None,
        now: str | None = None,
    ) -> Transition:
        values = {":now": now or iso_now(), **values}
        try:
            response = call(
                "update_item",
                busy=PaymentRecordsContention,
                TableName=self._table(),
                Key={"order_id": {"S": order_id}},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status", **(names or {})},
                ExpressionAttributeValues={key: serialize(value) for key, value in values.items()},
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if not is_condition_failure(error):
                raise
            item = error.response.get("Item")
            return Transition(applied=False, payment=to_payment(item) if item else None)
        return Transition(applied=True, payment=to_payment(response["Attributes"]))
