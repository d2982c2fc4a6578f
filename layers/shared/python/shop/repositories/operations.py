"""Operational state shared by every function instance, in OperationsTable (pk, sk).

- Circuit breakers: ``pk = "circuit#{name}"``, ``sk = "state"``; every write is a
  compare-and-set on ``version``. ``window`` holds the window's outcomes, pruned and capped by
  the breaker before every write, as ONE JSON string of ``[key, at, failed, source]`` rows: while
  the window holds a failure every payment call reads and writes this item, and up to 200
  outcomes as nested DynamoDB maps cost every caller a deep parse and serialization (most of the
  payment steps' CPU under a failing provider). Items written as an ``outcomes`` map are read too.
- The payment simulator:
  - ``pk = "simulator#request#{idempotency key}"``: ``sk = "result"`` is the first result for the
    key; ``sk = "attempt"`` marks that an attempt was made (tok_flaky fails only the first).
  - ``pk = "simulator#authorization#{ref}"``: the ledger of one authorization. ``sk =
    "authorization"`` holds its amounts and status; ``capture#``, ``void#`` and ``refund#`` items
    record each operation. A result and its ledger change are written in ONE transaction, so a
    key can never be answered without the ledger having moved, or the reverse.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from botocore.exceptions import ClientError

from shop.config import table_settings
from shop.errors import (
    CaptureExceedsAuthorization,
    PaymentProviderError,
    PaymentStateConflict,
    RefundExceedsCapture,
)
from shop.models.base import iso_now
from shop.payments.circuit_breaker import BreakerOutcome, BreakerState
from shop.payments.simulator import LedgerAuthorization, LedgerEntry, SimulatedResult, SimulatorLedger
from shop.repositories.dynamodb import call, cancellation_codes, error_code, is_condition_failure, marshal, unmarshal


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _table() -> str:
    return table_settings().operations_table


def _call(operation: str, **request: Any) -> Any:
    # The breaker and the simulator serve the payment steps, whose retry policies name this error.
    return call(operation, busy=PaymentProviderError, **request)


# ---------------------------------------------------------------------------- circuit breakers
@functools.lru_cache(maxsize=4096)
def _outcome(at: float, failed: int, source: str) -> BreakerOutcome:
    # Two consecutive windows share all but their newest rows: each row's model is built once.
    return BreakerOutcome(at=at, failed=bool(failed), source=source)


@functools.lru_cache(maxsize=8)
def _parsed_window(window: str) -> dict[str, BreakerOutcome]:
    """The window's outcomes; cached by the stored string, because every caller reads the same item
    again and again between two writes (an open breaker's admissions, a call's admit-then-record).
    Each write changes the string, so the rows' models are cached too: 100 outcomes are 100 models
    to build, most of them already built for the previous version. Callers get a copy: the outcomes
    themselves are frozen, so sharing them is safe."""
    return {key: _outcome(at, failed, source) for key, at, failed, source in json.loads(window)}


class DynamoBreakerStore:
    """``BreakerStore`` over OperationsTable."""

    @staticmethod
    def _pk(name: str) -> str:
        return f"circuit#{name}"

    def load(self, name: str, *, consistent: bool = True) -> BreakerState:
        response = _call("get_item", TableName=_table(), Key=_key(self._pk(name), "state"), ConsistentRead=consistent)
        item = response.get("Item")
        if not item:
            return BreakerState()
        window = item.pop("window", None)
        fields = unmarshal(item)
        fields.pop("pk", None)
        fields.pop("sk", None)
        if window is not None:
            fields["outcomes"] = dict(_parsed_window(window["S"]))
        return BreakerState.model_validate(fields)

    def replace(self, name: str, state: BreakerState, expected_version: int) -> bool:
        fields = state.model_dump(mode="python", exclude={"outcomes"})
        window = [[key, o.at, int(o.failed), o.source] for key, o in state.outcomes.items()]
        item = {
            **fields,
            "window": json.dumps(window, separators=(",", ":")),
            "pk": self._pk(name),
            "sk": "state",
            "version": expected_version + 1,
            "updated_at": iso_now(),
        }
        if expected_version == 0:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            condition = {
                "ConditionExpression": "version = :expected",
                "ExpressionAttributeValues": {":expected": {"N": str(expected_version)}},
            }
        try:
            _call("put_item", TableName=_table(), Item=marshal(item), **condition)
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise
        return True


# ---------------------------------------------------------------------------- payment simulator
class _Cancelled(Exception):
    def __init__(self, codes: list[str], items: list[dict[str, Any] | None]) -> None:
        super().__init__(", ".join(codes))
        self.codes = codes
        self.items = items


class DynamoSimulatorStore:
    """``SimulatorStore`` over OperationsTable."""

    @staticmethod
    def _request_pk(idempotency_key: str) -> str:
        return f"simulator#request#{idempotency_key}"

    @staticmethod
    def _ledger_pk(authorization_ref: str) -> str:
        return f"simulator#authorization#{authorization_ref}"

    def result(self, idempotency_key: str) -> SimulatedResult | None:
        response = _call(
            "get_item", TableName=_table(), Key=_key(self._request_pk(idempotency_key), "result"), ConsistentRead=True
        )
        item = response.get("Item")
        return SimulatedResult.model_validate(unmarshal(item)) if item else None

    def first_attempt(self, idempotency_key: str) -> bool:
        try:
            _call(
                "put_item",
                TableName=_table(),
                Item=marshal({"pk": self._request_pk(idempotency_key), "sk": "attempt", "at": iso_now()}),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise
        return True

    def record_decline(self, result: SimulatedResult) -> SimulatedResult:
        return self._record(result, [])

    def record_authorization(self, result: SimulatedResult, token: str) -> SimulatedResult:
        now = result.created_at
        authorization = LedgerAuthorization(
            reference=str(result.reference),
            token=token,
            amount=result.amount,
            currency=result.currency,
            status="AUTHORIZED",
            created_at=now,
            updated_at=now,
        )
        put = {
            "Put": {
                "TableName": _table(),
                "Item": marshal(
                    {
                        **authorization.model_dump(),
                        "pk": self._ledger_pk(authorization.reference),
                        "sk": "authorization",
                    }
                ),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }
        return self._record(result, [put])

    def record_capture(self, result: SimulatedResult) -> SimulatedResult:
        # One capture per authorization, at most its amount; the remainder is released.
        update = self._authorization_update(
            result,
            "SET #status = :captured, captured_amount = :amount, refundable_amount = :amount, updated_at = :now",
            "#status = :authorized AND amount >= :amount",
            {":captured": "CAPTURED", ":authorized": "AUTHORIZED", ":amount": result.amount},
        )
        try:
            return self._record(result, [update, self._entry_put(result, "capture")])
        except _Cancelled as cancelled:
            authorization = self._cancelled_authorization(cancelled, result)
            if authorization.status != "AUTHORIZED":
                raise PaymentStateConflict(f"authorization is {authorization.status}; cannot capture") from None
            raise CaptureExceedsAuthorization(
                f"capture of {result.amount} exceeds the authorized {authorization.amount}"
            ) from None

    def record_void(self, result: SimulatedResult) -> SimulatedResult:
        update = self._authorization_update(
            result,
            "SET #status = :voided, updated_at = :now",
            "#status = :authorized",
            {":voided": "VOIDED", ":authorized": "AUTHORIZED"},
        )
        try:
            return self._record(result, [update, self._entry_put(result, "void")])
        except _Cancelled as cancelled:
            authorization = self._cancelled_authorization(cancelled, result)
            raise PaymentStateConflict(f"authorization is {authorization.status}; cannot void") from None

    def record_refund(self, result: SimulatedResult) -> SimulatedResult:
        # ``refundable_amount`` counts down, so refunds <= capture needs no arithmetic in the condition.
        update = self._authorization_update(
            result,
            "SET refundable_amount = refundable_amount - :amount, refunded_amount = refunded_amount + :amount, "
            "updated_at = :now",
            "#status = :captured AND refundable_amount >= :amount",
            {":captured": "CAPTURED", ":amount": result.amount},
        )
        try:
            return self._record(result, [update, self._entry_put(result, "refund")])
        except _Cancelled as cancelled:
            authorization = self._cancelled_authorization(cancelled, result)
            if authorization.status != "CAPTURED":
                raise PaymentStateConflict(f"authorization is {authorization.status}; cannot refund") from None
            raise RefundExceedsCapture(
                f"refund of {result.amount} exceeds the {authorization.refundable_amount} still refundable"
            ) from None

    def ledger(self, authorization_ref: str) -> SimulatorLedger | None:
        items: list[dict[str, Any]] = []
        request: dict[str, Any] = {
            "TableName": _table(),
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": self._ledger_pk(authorization_ref)}},
            "ConsistentRead": True,
        }
        while True:
            page = _call("query", **request)
            items.extend(unmarshal(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        authorization = next((item for item in items if item["sk"] == "authorization"), None)
        if authorization is None:
            return None
        entries = sorted(
            (LedgerEntry.model_validate(item) for item in items if item["sk"] != "authorization"),
            key=lambda entry: (entry.created_at, entry.reference),
        )
        return SimulatorLedger(authorization=LedgerAuthorization.model_validate(authorization), entries=entries)

    # ------------------------------------------------------------------ plumbing
    def _record(self, result: SimulatedResult, ledger_actions: list[dict[str, Any]]) -> SimulatedResult:
        """Store ``result`` under its key together with ``ledger_actions``; the key's first
        result if it was already used. Raises ``_Cancelled`` when a ledger action's condition
        failed (reasons line up with the actions, the result's Put first)."""
        put_result = {
            "Put": {
                "TableName": _table(),
                "Item": marshal(
                    {**result.model_dump(), "pk": self._request_pk(result.idempotency_key), "sk": "result"}
                ),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }
        try:
            _call("transact_write_items", TransactItems=[put_result, *ledger_actions])
        except ClientError as error:
            if error_code(error) != "TransactionCanceledException":
                raise
            reasons = error.response.get("CancellationReasons", [])
            codes = cancellation_codes(error)
            if "TransactionConflict" in codes:
                raise PaymentProviderError("simulator state is busy (TransactionConflict); retry") from error
            if codes and codes[0] == "ConditionalCheckFailed":
                earlier = self.result(result.idempotency_key)
                if earlier is not None:
                    return earlier
            if "ConditionalCheckFailed" in codes[1:]:
                raise _Cancelled(
                    codes, [unmarshal(reason["Item"]) if reason.get("Item") else None for reason in reasons]
                ) from error
            raise
        return result

    def _authorization_update(
        self, result: SimulatedResult, expression: str, condition: str, values: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": _table(),
                "Key": _key(self._ledger_pk(str(result.authorization_ref)), "authorization"),
                "UpdateExpression": expression,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": marshal({**values, ":now": result.created_at}),
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _entry_put(self, result: SimulatedResult, kind: str) -> dict[str, Any]:
        entry = LedgerEntry(
            kind=kind,  # type: ignore[arg-type]
            reference=str(result.reference),
            amount=result.amount,
            idempotency_key=result.idempotency_key,
            created_at=result.created_at,
        )
        return {
            "Put": {
                "TableName": _table(),
                "Item": marshal(
                    {
                        **entry.model_dump(),
                        "pk": self._ledger_pk(str(result.authorization_ref)),
                        "sk": f"{kind}#{entry.reference}",
                    }
                ),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }

    @staticmethod
    def _cancelled_authorization(cancelled: _Cancelled, result: SimulatedResult) -> LedgerAuthorization:
        # The authorization update is always the action right after the result's Put.
        item = cancelled.items[1] if len(cancelled.items) > 1 else None
        if item is None:
            raise PaymentStateConflict(f"unknown authorization {result.authorization_ref!r}") from None
        return LedgerAuthorization.model_validate(item)
