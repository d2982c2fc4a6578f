"""Runtime configuration: SSM parameters seeded from the template, changed by an operator, in force
within the cache interval, validated, and never a reason for a request to fail.

Time passes by moving the clock Powertools' parameter cache reads (``datetime.now`` in its base
module), never by sleeping: within the interval the cached values stay, past it the new ones apply.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parameters import base as powertools_parameters

from infra.local.template import load_template, parameter_defaults, resources_of_type
from shop import config
from shop.config import (
    RUNTIME_PARAMETERS,
    feature_switches,
    inventory_settings,
    payment_settings,
    runtime_config_settings,
)
from shop.domain import payments as payment_domain
from shop.payments.simulator import SimulatorProvider
from shop.repositories import runtime_parameters as parameters
from tests.conftest import LocalAws, random_suffix
from tests.service.orders_helpers import Shop, open_shop, seed_product


class ParameterClock:
    """Powertools' cache clock, moved forward by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = timedelta()
        clock = self

        class Shifted(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return datetime.now(tz) + clock.offset

        monkeypatch.setattr(powertools_parameters, "datetime", Shifted)

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


class RecordedErrors:
    """Stands in for the Powertools logger of shop.config and shop.repositories.runtime_parameters: keeps each error."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, dict[str, Any]]] = []

    def error(self, message: str, *, extra: dict[str, Any]) -> None:
        self.errors.append((message, extra))

    def warning(self, message: str, *, extra: dict[str, Any]) -> None:
        pass


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ParameterClock:
    return ParameterClock(monkeypatch)


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> RecordedErrors:
    recorded = RecordedErrors()
    monkeypatch.setattr(config, "logger", lambda: recorded)
    monkeypatch.setattr(parameters, "logger", lambda: recorded)
    return recorded


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=100)
    with open_shop(local_aws) as opened:
        yield opened


def put(local_aws: LocalAws, name: str, value: str) -> None:
    """What an operator does: ``aws ssm put-parameter --overwrite``."""
    path = local_aws.stack.api_environment["RUNTIME_CONFIG_PATH"]
    local_aws.client("ssm").put_parameter(Name=f"{path}/{name}", Value=value, Type="String", Overwrite=True)


def past_the_interval(clock: ParameterClock) -> None:
    clock.advance(runtime_config_settings().max_age_seconds + 1)


def within_the_interval(clock: ParameterClock) -> None:
    # Half of it: the real seconds a cold start takes must not carry the test past the interval.
    clock.advance(runtime_config_settings().max_age_seconds / 2)


def _count(local_aws: LocalAws, table: str) -> int:
    dynamodb = local_aws.client("dynamodb")
    return int(dynamodb.scan(TableName=local_aws.table(table), Select="COUNT")["Count"])


# ---------------------------------------------------------------------------- defaults
def test_the_template_seeds_every_runtime_parameter_with_the_settings_defaults(local_aws: LocalAws) -> None:
    path = local_aws.stack.api_environment["RUNTIME_CONFIG_PATH"]
    assert path == "/test/config"
    assert runtime_config_settings().max_age_seconds == 60
    stored = {
        parameter["Name"].removeprefix(f"{path}/"): parameter["Value"]
        for parameter in local_aws.client("ssm").get_parameters_by_path(Path=path, Recursive=True)["Parameters"]
    }
    # The template and shop.config name the same parameters, no more and no less.
    assert sorted(stored) == sorted(RUNTIME_PARAMETERS)
    assert sorted(local_aws.stack.parameter_names.values()) == sorted(f"{path}/{name}" for name in RUNTIME_PARAMETERS)
    # Each template default is what the settings model defaults to: deploying changes no behaviour.
    for name, (model, field) in RUNTIME_PARAMETERS.items():
        default = model.model_fields[field].default
        assert getattr(model.model_validate({field: stored[name]}), field) == default, name
    assert payment_settings() == config.PaymentSettings()
    assert inventory_settings() == config.InventorySettings()
    assert feature_switches().accepting_orders is True


def test_the_template_parameters_default_to_the_settings_defaults() -> None:
    template = load_template()
    defaults = parameter_defaults(template)
    for resource in resources_of_type(template, "AWS::SSM::Parameter").values():
        properties = resource["Properties"]
        name = properties["Name"]["Fn::Sub"].rsplit("/", 1)[1]
        model, field = RUNTIME_PARAMETERS[name]
        value = defaults[properties["Value"]["Ref"]]
        assert getattr(model.model_validate({field: value}), field) == model.model_fields[field].default, name


# ---------------------------------------------------------------------------- accepting orders
def test_orders_paused_answer_503_write_nothing_and_orders_already_placed_finish(
    shop: Shop, local_aws: LocalAws, clock: ParameterClock
) -> None:
    placed = shop.place_ok([("MUG-1", 1)])
    put(local_aws, "accepting-orders", "false")

    within_the_interval(clock)
    assert shop.place([("MUG-1", 1)]).status_code == 202  # the cached switch is still on

    past_the_interval(clock)
    orders, idempotency = _count(local_aws, "OrdersTable"), _count(local_aws, "IdempotencyTable")
    executions = len(shop.executions("CheckoutStateMachine"))
    refused = shop.place([("MUG-1", 1)], key="paused-1")

    assert refused.status_code == 503
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.headers["Retry-After"] == "60"
    assert refused.json_body["type"] == "urn:shop:problem:orders-paused"
    assert refused.json_body["status"] == 503
    assert (_count(local_aws, "OrdersTable"), _count(local_aws, "IdempotencyTable")) == (orders, idempotency)
    assert len(shop.executions("CheckoutStateMachine")) == executions
    # An order placed before the switch finishes while it is off.
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    assert shop.order(placed["order_id"]).status == "COMPLETED"

    put(local_aws, "accepting-orders", "true")
    past_the_interval(clock)
    again = shop.place([("MUG-1", 1)], key="paused-1")  # the refused request, retried
    assert again.status_code == 202, again.body
    assert shop.wait_checkout(again.json_body["order_id"]) == "SUCCEEDED"


def test_a_replay_of_an_order_placed_before_the_pause_still_answers_it(
    shop: Shop, local_aws: LocalAws, clock: ParameterClock
) -> None:
    first = shop.place([("MUG-1", 1)], key="before-the-pause")
    assert first.status_code == 202
    put(local_aws, "accepting-orders", "false")
    past_the_interval(clock)

    # Its answer lost, the client repeats the request: the first answer again, not 503.
    replay = shop.place([("MUG-1", 1)], key="before-the-pause")
    assert (replay.status_code, replay.json_body["order_id"]) == (202, first.json_body["order_id"]), replay.body
    # Once its idempotency record has expired too, the replay still answers the order it placed.
    dynamodb = local_aws.client("dynamodb")
    for item in dynamodb.scan(TableName=local_aws.table("IdempotencyTable"))["Items"]:
        dynamodb.delete_item(TableName=local_aws.table("IdempotencyTable"), Key={"id": item["id"]})
    late = shop.place([("MUG-1", 1)], key="before-the-pause")
    assert (late.status_code, late.json_body["order_id"]) == (202, first.json_body["order_id"]), late.body
    assert _count(local_aws, "IdempotencyTable") == 1 and _count(local_aws, "OrdersTable") == 1


def test_the_openapi_document_states_the_paused_answer(shop: Shop) -> None:
    document = shop.client.http.get("/openapi.json").json_body
    operation = document["paths"]["/orders"]["post"]
    assert "Retry-After" in operation["responses"]["503"]["headers"]
    assert "orders-paused" in operation["description"]


# ---------------------------------------------------------------------------- reservation TTL
def _reserve(local_aws: LocalAws) -> dict[str, Any]:
    event = {"order_id": str(uuid.uuid4()), "lines": [{"sku": "MUG-1", "quantity": 1}]}
    response = local_aws.client("lambda").invoke(
        FunctionName=local_aws.function("ReserveStockFunction"), Payload=json.dumps(event)
    )
    assert response.get("FunctionError") is None
    return json.loads(response["Payload"].read())


def _held_for(local_aws: LocalAws) -> range:
    """Possible TTLs of a reservation made now (whole seconds of the clock passed while reserving)."""
    before = int(time.time())
    expires_at = int(_reserve(local_aws)["expires_at"])
    after = int(time.time())
    return range(expires_at - after, expires_at - before + 1)


def test_a_new_reservation_ttl_applies_to_reservations_made_after_the_interval(
    shop: Shop, local_aws: LocalAws, clock: ParameterClock
) -> None:
    assert 900 in _held_for(local_aws)
    put(local_aws, "reservation-ttl-seconds", "120")

    within_the_interval(clock)
    assert 900 in _held_for(local_aws)
    past_the_interval(clock)
    assert 120 in _held_for(local_aws)


# ---------------------------------------------------------------------------- breaker threshold
def _authorize(local_aws: LocalAws, token: str, customer: str) -> dict[str, Any]:
    event = {
        "order_id": f"ord-{random_suffix()}",
        "amount": {"amount": 100, "currency": "USD"},
        "payment_token": token,
        "customer_id": customer,
    }
    response = local_aws.client("lambda").invoke(
        FunctionName=local_aws.function("AuthorizePaymentFunction"), Payload=json.dumps(event)
    )
    return json.loads(response["Payload"].read())


def test_a_lower_breaker_threshold_opens_the_breaker_after_the_interval(
    local_aws: LocalAws, clock: ParameterClock
) -> None:
    assert payment_settings().breaker_minimum_calls == 10  # read (and cached) before the change
    put(local_aws, "payment-breaker-minimum-calls", "3")
    within_the_interval(clock)
    for n in range(3):
        assert _authorize(local_aws, "tok_processingError", f"cust-a{n}")["errorType"] == "PaymentProviderError"
    # Three failures from three customers: below the deployed minimum of 10 calls.
    assert payment_domain.circuit_breaker_status().state == "CLOSED"

    past_the_interval(clock)
    assert payment_domain.circuit_breaker_status().minimum_calls == 3
    assert _authorize(local_aws, "tok_processingError", "cust-b")["errorType"] == "PaymentProviderError"

    assert payment_domain.circuit_breaker_status().state == "OPEN"
    assert _authorize(local_aws, "tok_visa", "someone-else")["errorType"] == "CircuitOpen"


# ---------------------------------------------------------------------------- low stock
def _stock_levels(shop: Shop) -> dict[str, Any]:
    response = shop.client.http.get("/admin/stock", headers=shop.headers("admin"))
    assert response.status_code == 200, response.body
    return response.json_body


def test_a_new_low_stock_threshold_flags_the_operators_stock_view_after_the_interval(
    shop: Shop, local_aws: LocalAws, clock: ParameterClock
) -> None:
    page = _stock_levels(shop)
    assert page["low_stock_threshold"] == 5
    assert [(item["sku"], item["available"], item["low_stock"]) for item in page["items"]] == [("MUG-1", 100, False)]
    put(local_aws, "low-stock-threshold", "100")

    within_the_interval(clock)
    assert _stock_levels(shop)["low_stock_threshold"] == 5
    past_the_interval(clock)
    page = _stock_levels(shop)
    assert page["low_stock_threshold"] == 100
    assert [(item["sku"], item["low_stock"]) for item in page["items"]] == [("MUG-1", True)]


# ---------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("name", "good", "bad", "read"),
    [
        ("payment-breaker-minimum-calls", "4", "lots", lambda: payment_settings().breaker_minimum_calls),
        ("payment-breaker-minimum-calls", "4", "101", lambda: payment_settings().breaker_minimum_calls),
        ("reservation-ttl-seconds", "300", "0", lambda: inventory_settings().reservation_ttl_seconds),
        ("accepting-orders", "false", "maybe", lambda: feature_switches().accepting_orders),
        ("low-stock-threshold", "2", "-1", lambda: inventory_settings().low_stock_threshold),
        ("low-stock-threshold", "2", "1" + "0" * 40, lambda: inventory_settings().low_stock_threshold),
        ("reservation-ttl-seconds", "300", "86401", lambda: inventory_settings().reservation_ttl_seconds),
        # JSON has no Infinity: the operators' breaker view answered invalid JSON, and an open
        # breaker would never have let a probe through.
        ("payment-breaker-cooldown-seconds", "45.0", "inf", lambda: payment_settings().breaker_cooldown_seconds),
        ("payment-breaker-cooldown-seconds", "45.0", "1e999", lambda: payment_settings().breaker_cooldown_seconds),
        ("payment-breaker-window-seconds", "90.0", "Infinity", lambda: payment_settings().breaker_window_seconds),
        ("payment-breaker-window-seconds", "90.0", "3601", lambda: payment_settings().breaker_window_seconds),
        (
            "payment-breaker-minimum-failing-sources",
            "2",
            "101",
            lambda: payment_settings().breaker_minimum_failing_sources,
        ),
    ],
)
def test_a_bad_value_is_rejected_and_logged_and_the_last_good_value_kept(
    local_aws: LocalAws, clock: ParameterClock, logged: RecordedErrors, name: str, good: str, bad: str, read: Any
) -> None:
    put(local_aws, name, good)
    past_the_interval(clock)
    kept = read()
    assert str(kept).lower() == good

    put(local_aws, name, bad)
    past_the_interval(clock)

    assert read() == kept
    assert [(message, extra["parameter"], extra["value"]) for message, extra in logged.errors] == [
        ("runtime parameter rejected; keeping the last good value", name, bad)
    ]
    past_the_interval(clock)
    read()
    assert len(logged.errors) == 1  # logged once per change, not once per read


def test_a_bad_first_value_keeps_the_default(
    local_aws: LocalAws, clock: ParameterClock, logged: RecordedErrors
) -> None:
    put(local_aws, "payment-breaker-cooldown-seconds", "-5")
    past_the_interval(clock)
    assert payment_settings().breaker_cooldown_seconds == 30.0
    assert len(logged.errors) == 1


def test_an_unknown_payment_provider_is_rejected_never_used(
    local_aws: LocalAws, clock: ParameterClock, logged: RecordedErrors
) -> None:
    put(local_aws, "payment-provider", "acme-pay")
    past_the_interval(clock)

    assert payment_settings().provider == "simulator"
    assert isinstance(payment_domain.provider(), SimulatorProvider)
    assert [extra["parameter"] for _, extra in logged.errors] == ["payment-provider"]
    # Every provider the setting admits has an implementation.
    admitted = set(config.PaymentSettings.model_fields["provider"].annotation.__args__)  # type: ignore[union-attr]
    assert admitted == set(payment_domain.PROVIDERS)


def test_unreadable_parameters_keep_the_last_good_values_and_requests_succeed(
    shop: Shop, local_aws: LocalAws, clock: ParameterClock, logged: RecordedErrors, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(local_aws, "payment-breaker-minimum-calls", "7")
    past_the_interval(clock)
    assert payment_settings().breaker_minimum_calls == 7

    def unreachable() -> Any:
        raise RuntimeError("Parameter Store is unreachable")

    monkeypatch.setattr(parameters, "_ssm", unreachable)
    past_the_interval(clock)

    assert payment_settings().breaker_minimum_calls == 7
    placed = shop.place_ok([("MUG-1", 1)])
    assert shop.wait_checkout(placed["order_id"]) == "SUCCEEDED"
    assert [message for message, _ in logged.errors][:1] == [
        "runtime parameters unreadable; keeping the last good values"
    ]
