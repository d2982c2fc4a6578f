"""The published events' schemas: every detail-type's current version is committed in
events/schemas/ exactly as generated, a model change that would break it fails here unless it comes
with a new version, and what the publishers build validates against what was published."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import pytest
from pydantic import Field

from infra import event_schemas
from shop.domain import events
from shop.models.events import PUBLISHED, EventDetail, OrderCompleted, StockLow
from shop.models.money import Money
from shop.models.orders import HistoryEntry, Order, OrderLine

DETAIL_TYPES = sorted(PUBLISHED)


def _committed(detail_type: str) -> dict[str, Any]:
    _, model = PUBLISHED[detail_type]
    path = event_schemas.schema_path(detail_type, event_schemas.detail_version(model))
    assert path.exists(), f"{path.name} is not committed: run python -m infra.event_schemas"
    return json.loads(path.read_text())


@pytest.mark.parametrize("detail_type", DETAIL_TYPES)
def test_no_model_breaks_its_published_schema(detail_type: str) -> None:
    broken = event_schemas.breaking_changes(_committed(detail_type), event_schemas.generate(detail_type))
    assert not broken, (
        f"{detail_type} changed incompatibly ({'; '.join(broken)}): keep the field, or publish a new version "
        "(version: Literal[2]) and generate its schema beside the old one"
    )


@pytest.mark.parametrize("detail_type", DETAIL_TYPES)
def test_the_committed_schema_is_the_generated_one(detail_type: str) -> None:
    assert _committed(detail_type) == event_schemas.generate(detail_type), "run python -m infra.event_schemas"


def test_every_detail_type_is_committed_and_nothing_else() -> None:
    committed = {path.name for path in event_schemas.SCHEMA_DIR.glob("*.json")}
    current = {
        event_schemas.schema_path(name, event_schemas.detail_version(model)).name
        for name, (_, model) in PUBLISHED.items()
    }
    # Older versions stay (consumers may still read them); every current one is there.
    assert current <= committed
    assert all(name.split(".v")[0] in PUBLISHED for name in committed)


# ---------------------------------------------------------------------------- the compatibility rule
def _schema(model: type[EventDetail]) -> dict[str, Any]:
    return model.model_json_schema(mode="serialization")


class _Removed(EventDetail):  # OrderCompleted without customer_id
    order_id: str
    status: str
    total: Money


class _Retyped(OrderCompleted):
    total: int  # type: ignore[assignment]


class _NewlyRequired(OrderCompleted):
    channel: str


class _NewOptional(OrderCompleted):
    channel: str | None = Field(default=None, description="where the order came from")


class _Reworded(OrderCompleted):
    order_id: str = Field(description="another description")


class _NextVersion(OrderCompleted):
    version: Literal[2]  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("changed", "finding"),
    [
        (_Removed, "customer_id: removed or renamed"),
        (_Retyped, "total: type or constraints changed"),
        (_NewlyRequired, "channel: newly required"),
        (_NextVersion, "version: type or constraints changed"),
    ],
)
def test_a_breaking_change_is_found(changed: type[EventDetail], finding: str) -> None:
    assert finding in event_schemas.breaking_changes(_schema(OrderCompleted), _schema(changed))


@pytest.mark.parametrize("changed", [_NewOptional, _Reworded, OrderCompleted])
def test_a_compatible_change_is_not_breaking(changed: type[EventDetail]) -> None:
    assert event_schemas.breaking_changes(_schema(OrderCompleted), _schema(changed)) == []


def test_a_new_version_gets_a_file_of_its_own() -> None:
    assert event_schemas.detail_version(_NextVersion) == 2
    assert event_schemas.schema_path("OrderCompleted", 2).name == "OrderCompleted.v2.json"


# ---------------------------------------------------------------------------- what is published
def _order(**changes: Any) -> Order:
    line = OrderLine(sku="MUG-1", name="Mug", quantity=2, unit_price=Money(amount=500), line_total=Money(amount=1000))
    return Order(
        order_id="order-1",
        customer_id="alice",
        status="PENDING",
        items=[line],
        total=Money(amount=1000),
        history=[HistoryEntry(step="order_placed", status="PENDING", at="2030-01-01T00:00:00.000Z")],
        created_at="2030-01-01T00:00:00.000Z",
        updated_at="2030-01-01T00:00:00.000Z",
    ).model_copy(update=changes)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (None, _order()),
        (_order(status="PAYMENT_AUTHORIZED"), _order(status="COMPLETED", version=5)),
        (_order(status="PAYMENT_AUTHORIZED"), _order(status="CANCELLED", failure_reason="PAYMENT_DECLINED")),
        (_order(status="REFUNDING"), _order(status="REFUNDED")),
        (_order(status="REFUNDING"), _order(status="NEEDS_ATTENTION")),
    ],
)
def test_published_order_details_validate_against_their_committed_schema(old: Order | None, new: Order) -> None:
    announced = events.order_transition(old, new)
    assert announced is not None
    jsonschema.validate(announced.detail.model_dump(mode="json"), _committed(announced.detail_type))


def test_a_stock_low_detail_validates_against_its_committed_schema() -> None:
    detail = StockLow(
        version=1,
        event_id="MUG-1:STOCK_LOW:1",
        occurred_at="2030-01-01T00:00:00.000Z",
        sku="MUG-1",
        available=3,
        threshold=5,
    )
    jsonschema.validate(detail.model_dump(mode="json"), _committed("StockLow"))
