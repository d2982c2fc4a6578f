"""The payment steps through real Lambda invocations: results, error names, double delivery."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.local import lambda_runtime
from shop.domain import payments as domain
from shop.models.payments import Payment
from shop.payments.simulator import SimulatorLedger
from shop.repositories.payments import PaymentsRepository
from tests.conftest import LocalAws, random_suffix

AUTHORIZE = "AuthorizePaymentFunction"
CAPTURE = "CapturePaymentFunction"
VOID = "VoidPaymentFunction"
REFUND = "RefundPaymentFunction"


def invoke(local_aws: LocalAws, logical_id: str, event: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    response = local_aws.client("lambda").invoke(FunctionName=local_aws.function(logical_id), Payload=json.dumps(event))
    return json.loads(response["Payload"].read()), response.get("FunctionError")


def ok(local_aws: LocalAws, logical_id: str, event: dict[str, Any]) -> dict[str, Any]:
    payload, error = invoke(local_aws, logical_id, event)
    assert error is None, payload
    return payload


def error_type(local_aws: LocalAws, logical_id: str, event: dict[str, Any]) -> str:
    payload, error = invoke(local_aws, logical_id, event)
    assert error is not None, payload
    return str(payload["errorType"])


def usd(amount: int) -> dict[str, Any]:
    return {"amount": amount, "currency": "USD"}


def new_order() -> str:
    return f"ord-{random_suffix()}"


def stored(order_id: str) -> Payment | None:
    return PaymentsRepository().get(order_id)


def simulator_ledger(order_id: str) -> SimulatorLedger:
    payment = stored(order_id)
    assert payment is not None and payment.authorization_ref is not None
    ledger = domain.simulator().ledger(payment.authorization_ref)
    assert ledger is not None
    return ledger


def authorize_event(order_id: str, amount: int = 1000, token: str = "tok_visa") -> dict[str, Any]:
    return {"order_id": order_id, "execution_name": f"exec-{order_id}", "amount": usd(amount), "payment_token": token}


def test_the_happy_path_returns_payment_summaries(local_aws: LocalAws) -> None:
    order_id = new_order()
    assert ok(local_aws, AUTHORIZE, authorize_event(order_id, 4200)) == {
        "order_id": order_id,
        "status": "AUTHORIZED",
        "authorized": usd(4200),
        "captured": usd(0),
        "refunded": usd(0),
    }
    captured = ok(local_aws, CAPTURE, {"order_id": order_id, "amount": usd(4200)})
    assert (captured["status"], captured["captured"]) == ("CAPTURED", usd(4200))
    refunded = ok(local_aws, REFUND, {"order_id": order_id, "amount": None, "execution_name": "refund-exec"})
    assert (refunded["status"], refunded["refunded"]) == ("REFUNDED", usd(4200))


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("tok_chargeDeclined", "PaymentDeclined"),
        ("tok_processingError", "PaymentProviderError"),
        ("tok_nobody_knows", "PaymentDeclined"),
    ],
)
def test_authorization_failures_carry_their_class_name(local_aws: LocalAws, token: str, expected: str) -> None:
    assert error_type(local_aws, AUTHORIZE, authorize_event(new_order(), token=token)) == expected


def test_flaky_fails_transiently_then_the_retry_is_approved(local_aws: LocalAws) -> None:
    order_id = new_order()
    assert error_type(local_aws, AUTHORIZE, authorize_event(order_id, token="tok_flaky")) == "PaymentProviderError"
    assert ok(local_aws, AUTHORIZE, authorize_event(order_id, token="tok_flaky"))["status"] == "AUTHORIZED"


def test_amount_errors_carry_their_class_name_and_change_nothing(local_aws: LocalAws) -> None:
    order_id = new_order()
    ok(local_aws, AUTHORIZE, authorize_event(order_id, 1000))
    assert error_type(local_aws, CAPTURE, {"order_id": order_id, "amount": usd(1001)}) == "CaptureExceedsAuthorization"
    ok(local_aws, CAPTURE, {"order_id": order_id, "amount": usd(1000)})
    before = stored(order_id)
    refund = {"order_id": order_id, "amount": usd(1001), "execution_name": "refund-1"}
    assert error_type(local_aws, REFUND, refund) == "RefundExceedsCapture"
    assert error_type(local_aws, VOID, {"order_id": order_id}) == "PaymentAlreadyCaptured"
    assert stored(order_id) == before


@pytest.mark.parametrize(
    ("logical_id", "event"),
    [
        (AUTHORIZE, {"order_id": "o-bad", "amount": {"amount": -1}, "payment_token": "tok_visa"}),
        (AUTHORIZE, {"order_id": "o-bad", "amount": {"amount": "10"}, "payment_token": "tok_visa"}),
        (AUTHORIZE, {"order_id": "o-bad", "amount": usd(10)}),
        (CAPTURE, {"order_id": "o-bad", "amount": {"amount": 10, "currency": "EUR"}}),
        (VOID, {"order_id": "o-bad", "surprise": True}),
        (REFUND, {"order_id": "", "amount": None}),
        (REFUND, {"order_id": "o-bad", "amount": 10}),
        (REFUND, {"order_id": "o-bad", "amount": usd(10)}),  # a partial refund that names no run
    ],
)
def test_bad_events_are_field_errors_and_change_nothing(
    local_aws: LocalAws, logical_id: str, event: dict[str, Any]
) -> None:
    assert error_type(local_aws, logical_id, event) == "FieldError"
    table = local_aws.client("dynamodb").scan(TableName=local_aws.table("PaymentsTable"))
    assert table["Items"] == []
    operations = local_aws.client("dynamodb").scan(TableName=local_aws.table("OperationsTable"))
    assert operations["Items"] == []


def test_every_step_delivered_twice_acts_once(local_aws: LocalAws) -> None:
    order_id = new_order()
    lambda_runtime.faults.duplicate_deliveries.update(local_aws.function(name) for name in (AUTHORIZE, CAPTURE, REFUND))

    ok(local_aws, AUTHORIZE, authorize_event(order_id, 1000))
    ok(local_aws, CAPTURE, {"order_id": order_id, "amount": usd(1000)})
    partial = ok(local_aws, REFUND, {"order_id": order_id, "amount": usd(300), "execution_name": "refund-1"})
    assert partial["refunded"] == usd(300)
    full = ok(local_aws, REFUND, {"order_id": order_id, "amount": None, "execution_name": "refund-2"})
    assert (full["status"], full["refunded"]) == ("REFUNDED", usd(1000))

    payment = stored(order_id)
    assert payment is not None
    assert (payment.attempts, payment.captured_amount, payment.refunded_amount) == (1, 1000, 1000)
    ledger = simulator_ledger(order_id)
    assert [(entry.kind, entry.amount) for entry in ledger.entries] == [
        ("capture", 1000),
        ("refund", 300),
        ("refund", 700),
    ]
    scan = local_aws.client("dynamodb").scan(TableName=local_aws.table("OperationsTable"))
    authorizations = [item for item in scan["Items"] if item.get("operation") == {"S": "authorize"}]
    assert len(authorizations) == 1


def test_void_delivered_twice_voids_once(local_aws: LocalAws) -> None:
    order_id = new_order()
    ok(local_aws, AUTHORIZE, authorize_event(order_id, 500))
    lambda_runtime.faults.duplicate_deliveries.add(local_aws.function(VOID))

    assert ok(local_aws, VOID, {"order_id": order_id, "execution_name": "exec"})["status"] == "VOIDED"
    assert ok(local_aws, VOID, {"order_id": order_id})["status"] == "VOIDED"
    ledger = simulator_ledger(order_id)
    assert ledger.authorization.status == "VOIDED"
    assert len(ledger.of_kind("void")) == 1


def test_a_declined_authorization_delivered_twice_is_declined_once(local_aws: LocalAws) -> None:
    order_id = new_order()
    lambda_runtime.faults.duplicate_deliveries.add(local_aws.function(AUTHORIZE))
    assert error_type(local_aws, AUTHORIZE, authorize_event(order_id, token="tok_chargeDeclined")) == "PaymentDeclined"
    payment = stored(order_id)
    assert payment is not None
    assert (payment.status, payment.attempts) == ("DECLINED", 1)
