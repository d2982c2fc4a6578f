"""Operational state shared by every function instance, in OperationsTable (pk, sk).

- Circuit breakers: ``pk = "circuit#{name}"``, ``sk = "state"``; every write is a
  compare-and-set on ``version``. ``window`` holds the window's outcomes, pruned and capped by
  the breaker before every write, as ONE JSON string of ``[key, at, flags, source]`` rows: while
  the window holds a failure every payment call reads and writes this item, and up to 200
  outcomes as nested DynamoDB maps cost every caller a deep parse and serialization (most of the
  payment steps' CPU under a failing provider). ``flags`` is 1 for a failure, plus 2 when the
  outcome is not counted in the rate (so 0, 1 or 3; rows written before outcomes had a
  ``counted`` flag hold 0 or 1, and code that reads the column as "failed" still reads it right).
  Items written as an ``outcomes`` map are read too (their outcomes counted). ``failed_probes``,
  absent when empty, is a JSON string of ``[source, at]`` rows.
- The payment simulator: ONE item per idempotency key, ``pk = "simulator#key#{key_digest(key)}"``,
  ``sk = "result"``, so a key can be bound to one operation only (every write of it is
  conditional on ``attribute_not_exists(pk)`` or on what it holds), and every write is a
  single-item write (no transaction: AWS bills those twice per item):
  - an authorize key's item is the authorization itself with its whole ledger: the amounts and
    status (DECLINED, with its code, for a decline), and the ``capture``, ``void`` and ``refunds``
    (a map by idempotency key) entries. Its reference is derived from the key
    (``authorization_ref_for_key``), so authorize is one conditional PutItem, and a repeat gets
    the first result back from the refused write itself (ReturnValuesOnConditionCheckFailure).
  - a capture, void or refund key's item points to the authorization it acted on. It is written
    first, then the authorization's item is updated by ONE conditional UpdateItem whose condition
    is the ledger's invariant and refuses a repeat; the refused write returns the item as it was,
    which tells a replay (the key's entry is there) from a refusal. A pointer without its entry
    (a crash in between, or a refused call) means "not done": the key has no result yet, and a
    retry with the same key and authorization completes it.
  - ``pk = "simulator#request#{key}"``, ``sk = "attempt"`` marks that an attempt was made
    (tok_flaky fails only the first).
"""

from __future__ import annotations

import functools
import json
from typing import Any, Literal

from botocore.exceptions import ClientError

from shop.config import table_settings
from shop.errors import (
    CaptureExceedsAuthorization,
    PaymentProviderError,
    PaymentRecordsContention,
    PaymentStateConflict,
    RefundExceedsCapture,
)
from shop.models.base import iso_now
from shop.payments.circuit_breaker import BreakerOutcome, BreakerState
from shop.payments.simulator import (
    LedgerAuthorization,
    LedgerEntry,
    SimulatedResult,
    SimulatorLedger,
    authorization_ref_for_key,
    digest_of,
    key_digest,
)
from shop.repositories.dynamodb import call, is_condition_failure, marshal, unmarshal, unmarshal_plain


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _table() -> str:
    return table_settings().operations_table


def _call(operation: str, **request: Any) -> Any:
    # The simulator stands in for the provider: its busy store is the provider's failure, which the
    # payment steps' retry policies name.
    return call(operation, busy=PaymentProviderError, **request)


def _breaker_call(operation: str, **request: Any) -> Any:
    # The breaker's state is our own record: busy, it is ours to retry, never the provider's failure.
    return call(operation, busy=PaymentRecordsContention, **request)


# ---------------------------------------------------------------------------- circuit breakers
# A window row's flags.
_FAILED, _NOT_COUNTED = 1, 2


def _flags(outcome: BreakerOutcome) -> int:
    return (_FAILED if outcome.failed else 0) | (0 if outcome.counted else _NOT_COUNTED)


@functools.lru_cache(maxsize=4096)
def _outcome(at: float, flags: int, source: str) -> BreakerOutcome:
    # Two consecutive windows share all but their newest rows: each row's model is built once.
    return BreakerOutcome(at=at, failed=bool(flags & _FAILED), source=source, counted=not flags & _NOT_COUNTED)


@functools.lru_cache(maxsize=8)
def _parsed_window(window: str) -> dict[str, BreakerOutcome]:
    """The window's outcomes; cached by the stored string, because every caller reads the same item
    again and again between two writes (an open breaker's admissions, a call's admit-then-record).
    Each write changes the string, so the rows' models are cached too: 100 outcomes are 100 models
    to build, most of them already built for the previous version. Callers get a copy: the outcomes
    themselves are frozen, so sharing them is safe."""
    return {key: _outcome(at, flags, source) for key, at, flags, source in json.loads(window)}


class DynamoBreakerStore:
    """``BreakerStore`` over OperationsTable."""

    @staticmethod
    def _pk(name: str) -> str:
        return f"circuit#{name}"

    def load(self, name: str, *, consistent: bool = True) -> BreakerState:
        response = _breaker_call(
            "get_item", TableName=_table(), Key=_key(self._pk(name), "state"), ConsistentRead=consistent
        )
        item = response.get("Item")
        if not item:
            return BreakerState()
        window = item.pop("window", None)
        failed_probes = item.pop("failed_probes", None)
        fields = unmarshal(item)
        fields.pop("pk", None)
        fields.pop("sk", None)
        if window is not None:
            fields["outcomes"] = dict(_parsed_window(window["S"]))
        if failed_probes is not None:
            fields["failed_probes"] = dict(json.loads(failed_probes["S"]))
        return BreakerState.model_validate(fields)

    def replace(self, name: str, state: BreakerState, expected_version: int) -> bool:
        fields = state.model_dump(mode="python", exclude={"outcomes", "failed_probes"})
        window = [[key, o.at, _flags(o), o.source] for key, o in state.outcomes.items()]
        failed_probes = [[source, at] for source, at in state.failed_probes.items()]
        item = {
            **fields,
            "window": json.dumps(window, separators=(",", ":")),
            "failed_probes": json.dumps(failed_probes, separators=(",", ":")) if failed_probes else None,
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
            _breaker_call("put_item", TableName=_table(), Item=marshal(item), **condition)
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise
        return True


# ---------------------------------------------------------------------------- payment simulator
_EntryKind = Literal["capture", "void", "refund"]


class DynamoSimulatorStore:
    """``SimulatorStore`` over OperationsTable: authorize is one write, capture, void and refund
    two, and an authorization's ledger is one read."""

    @staticmethod
    def _result_key(digest: str) -> dict[str, Any]:
        return _key(f"simulator#key#{digest}", "result")

    def result(self, idempotency_key: str) -> SimulatedResult | None:
        item = self._get(self._result_key(key_digest(idempotency_key)))
        if item is None or item.get("idempotency_key") != idempotency_key:
            return None
        if item["operation"] == "authorize":
            return self._authorize_result(item)
        authorization = self._authorization_item(str(item["authorization_ref"]))
        if authorization is None:
            return None
        return self._entry_result(authorization, item["operation"], idempotency_key)

    def first_attempt(self, idempotency_key: str) -> bool:
        try:
            _call(
                "put_item",
                TableName=_table(),
                Item=marshal({"pk": f"simulator#request#{idempotency_key}", "sk": "attempt", "at": iso_now()}),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise
        return True

    def record_decline(self, result: SimulatedResult) -> SimulatedResult:
        return self._put_authorize_result(
            {"status": "DECLINED", "decline_code": result.decline_code, "amount": result.amount}, result
        )

    def record_authorization(self, result: SimulatedResult, token: str) -> SimulatedResult:
        if result.reference != authorization_ref_for_key(result.idempotency_key):
            raise ValueError("an authorization's reference is derived from its idempotency key")
        authorization = LedgerAuthorization(
            reference=result.reference,
            token=token,
            amount=result.amount,
            currency=result.currency,
            status="AUTHORIZED",
            created_at=result.created_at,
            updated_at=result.created_at,
        )
        # ``refunds`` exists from the start: an update can set a key in a map, not in a missing one.
        return self._put_authorize_result({**authorization.model_dump(), "refunds": {}}, result)

    def record_capture(self, result: SimulatedResult) -> SimulatedResult:
        # One capture per authorization, at most its amount; the remainder is released.
        refused = self._move(
            result,
            "capture",
            "SET #entry = :entry, #status = :captured, captured_amount = :amount, refundable_amount = :amount, "
            "updated_at = :now",
            "#status = :authorized AND amount >= :amount",
            {":captured": "CAPTURED", ":authorized": "AUTHORIZED", ":amount": result.amount},
        )
        if isinstance(refused, SimulatedResult):
            return refused  # applied, or applied before: the key's result
        if refused.status != "AUTHORIZED":
            raise PaymentStateConflict(f"authorization is {refused.status}; cannot capture")
        raise CaptureExceedsAuthorization(f"capture of {result.amount} exceeds the authorized {refused.amount}")

    def record_void(self, result: SimulatedResult) -> SimulatedResult:
        refused = self._move(
            result,
            "void",
            "SET #entry = :entry, #status = :voided, updated_at = :now",
            "#status = :authorized",
            {":voided": "VOIDED", ":authorized": "AUTHORIZED"},
        )
        if isinstance(refused, SimulatedResult):
            return refused  # applied, or applied before: the key's result
        raise PaymentStateConflict(f"authorization is {refused.status}; cannot void")

    def record_refund(self, result: SimulatedResult) -> SimulatedResult:
        # ``refundable_amount`` counts down, so refunds <= capture needs no arithmetic in the condition;
        # the key's own entry refuses a repeat.
        refused = self._move(
            result,
            "refund",
            "SET #entry.#key = :entry, refundable_amount = refundable_amount - :amount, "
            "refunded_amount = refunded_amount + :amount, updated_at = :now",
            "#status = :captured AND refundable_amount >= :amount AND attribute_not_exists(#entry.#key)",
            {":captured": "CAPTURED", ":amount": result.amount},
        )
        if isinstance(refused, SimulatedResult):
            return refused  # applied, or applied before: the key's result
        if refused.status != "CAPTURED":
            raise PaymentStateConflict(f"authorization is {refused.status}; cannot refund")
        raise RefundExceedsCapture(
            f"refund of {result.amount} exceeds the {refused.refundable_amount} still refundable"
        )

    def ledger(self, authorization_ref: str) -> SimulatorLedger | None:
        item = self._authorization_item(authorization_ref)
        if item is None:
            return None
        entries: list[LedgerEntry] = []
        for kind in ("capture", "void"):
            if kind in item:
                entries.append(LedgerEntry.model_validate({**item[kind], "kind": kind}))
        for key, refund in item.get("refunds", {}).items():
            entries.append(LedgerEntry.model_validate({**refund, "kind": "refund", "idempotency_key": key}))
        entries.sort(key=lambda entry: (entry.created_at, entry.reference))
        return SimulatorLedger(authorization=LedgerAuthorization.model_validate(item), entries=entries)

    # ------------------------------------------------------------------ plumbing
    def _get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        item = _call("get_item", TableName=_table(), Key=key, ConsistentRead=True).get("Item")
        return unmarshal_plain(item) if item else None

    def _authorization_item(self, authorization_ref: str) -> dict[str, Any] | None:
        """The authorization's item, or None when the reference names no (approved) authorization."""
        digest = digest_of(authorization_ref)
        item = self._get(self._result_key(digest)) if digest is not None else None
        if item is None or not _is_authorization(item) or item.get("reference") != authorization_ref:
            return None
        return item

    def _put_authorize_result(self, fields: dict[str, Any], result: SimulatedResult) -> SimulatedResult:
        item = {
            **fields,
            "operation": "authorize",
            "idempotency_key": result.idempotency_key,
            "currency": result.currency,
            "created_at": result.created_at,
        }
        old = self._put_first(result.idempotency_key, item)
        if old is None:
            return result
        if old["operation"] != "authorize":
            raise PaymentStateConflict(
                f"idempotency key {result.idempotency_key!r} was already used for a {old['operation']}"
            )
        return self._authorize_result(old)

    def _put_first(self, idempotency_key: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Write the key's item unless the key was used before: None if written, else the key's item."""
        key = self._result_key(key_digest(idempotency_key))
        item = {**marshal(fields), **key}
        try:
            _call(
                "put_item",
                TableName=_table(),
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if not is_condition_failure(error):
                raise
            old = unmarshal_plain(error.response.get("Item") or {})
            if old.get("idempotency_key") != idempotency_key:  # two keys with one digest: never in practice
                raise PaymentStateConflict(f"idempotency key {idempotency_key!r} collides with another") from None
            return old
        return None

    def _move(
        self,
        result: SimulatedResult,
        kind: _EntryKind,
        expression: str,
        condition: str,
        values: dict[str, Any],
    ) -> SimulatedResult | LedgerAuthorization:
        """Bind the key to this operation on this authorization, then apply the ledger change with
        the key's entry. The key's result (applied now, or replayed from before), or the
        authorization that refused it."""
        authorization_ref = str(result.authorization_ref)
        digest = digest_of(authorization_ref)
        if digest is None:
            raise PaymentStateConflict(f"unknown authorization {authorization_ref!r}")
        pointer = {
            "operation": kind,
            "idempotency_key": result.idempotency_key,
            "authorization_ref": authorization_ref,
            "created_at": result.created_at,
        }
        bound = self._put_first(result.idempotency_key, pointer)
        if bound is not None:
            if bound["operation"] != kind:
                raise PaymentStateConflict(
                    f"idempotency key {result.idempotency_key!r} was already used for a {bound['operation']}"
                )
            if bound.get("authorization_ref") != authorization_ref:
                other = bound.get("authorization_ref")
                raise PaymentStateConflict(f"idempotency key {result.idempotency_key!r} was already used for {other!r}")
            # Bound by an earlier call with this key: its entry is there (a replay, told by the
            # refused update) or not yet (that call stopped in between, or was refused): apply it now.
        entry = {"reference": result.reference, "amount": result.amount, "created_at": result.created_at}
        names = {"#status": "status", "#entry": "refunds" if kind == "refund" else kind}
        if kind == "refund":
            names["#key"] = result.idempotency_key
        else:
            entry["idempotency_key"] = result.idempotency_key
        try:
            _call(
                "update_item",
                TableName=_table(),
                Key=self._result_key(digest),
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=marshal({**values, ":entry": entry, ":now": result.created_at}),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if not is_condition_failure(error):
                raise
            return self._refusing(unmarshal_plain(error.response.get("Item") or {}), result)
        return result

    def _refusing(self, old: dict[str, Any], result: SimulatedResult) -> SimulatedResult | LedgerAuthorization:
        """Why the authorization refused ``result``: the key's own first result (a replay), or the
        authorization as it was, for the caller to name the broken invariant."""
        if not _is_authorization(old) or old.get("reference") != result.authorization_ref:
            raise PaymentStateConflict(f"unknown authorization {result.authorization_ref!r}")
        replay = self._entry_result(old, result.operation, result.idempotency_key)
        if replay is not None:
            return replay
        return LedgerAuthorization.model_validate(old)

    @staticmethod
    def _authorize_result(item: dict[str, Any]) -> SimulatedResult:
        approved = item["status"] != "DECLINED"
        return SimulatedResult(
            idempotency_key=item["idempotency_key"],
            operation="authorize",
            approved=approved,
            reference=item.get("reference"),
            authorization_ref=item.get("reference"),
            amount=item["amount"],
            currency=item.get("currency", "USD"),
            decline_code=None if approved else item.get("decline_code", "card_declined"),
            created_at=item["created_at"],
        )

    @staticmethod
    def _entry_result(authorization: dict[str, Any], operation: str, idempotency_key: str) -> SimulatedResult | None:
        """The result the authorization's ledger holds for ``idempotency_key``, if any."""
        if operation == "refund":
            entry = authorization.get("refunds", {}).get(idempotency_key)
        else:
            entry = authorization.get(operation)
            if entry is not None and entry.get("idempotency_key") != idempotency_key:
                entry = None
        if entry is None:
            return None
        return SimulatedResult.model_validate(
            {
                "idempotency_key": idempotency_key,
                "operation": operation,
                "approved": True,
                "reference": entry["reference"],
                "authorization_ref": authorization["reference"],
                "amount": entry["amount"],
                "currency": authorization.get("currency", "USD"),
                "created_at": entry["created_at"],
            }
        )


def _is_authorization(item: dict[str, Any]) -> bool:
    """An approved authorization's item (not a decline, nor a pointer of another operation's key)."""
    return item.get("operation") == "authorize" and item.get("status") in ("AUTHORIZED", "CAPTURED", "VOIDED")
