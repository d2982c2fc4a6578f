"""A stream record a publisher cannot read is set aside whole, and the records behind it go on; the
republisher publishes it, with the event id it always had, once a fixed publisher can read it.

Without this, such a record fails every retry: Lambda retries a stream from the first failed record,
so every record behind it in the shard would wait until it expired (24 hours), then be lost with it.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shop.domain import events
from shop.models.events import RepublishResult, UnreadableRecord
from shop.models.orders import Order
from shop.repositories import unreadable_records
from tests.conftest import LocalAws, notifications_for
from tests.service.orders_helpers import Shop, open_shop, seed_product
from tests.service.test_events import BusSpy, _adjust, _alerts, _duplicate_stream_deliveries


@pytest.fixture
def shop(local_aws: LocalAws) -> Iterator[Shop]:
    seed_product("MUG-1", price=1250, stock=50)
    with open_shop(local_aws) as opened:
        yield opened


@pytest.fixture
def spy(local_aws: LocalAws) -> BusSpy:
    return BusSpy(local_aws)


def republish(local_aws: LocalAws) -> RepublishResult:
    """One run of the scheduled republisher, as its schedule invokes it."""
    response = local_aws.client("lambda").invoke(
        FunctionName=local_aws.function("RepublishUnreadableRecordsFunction"),
        Payload=json.dumps({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}),
    )
    assert "FunctionError" not in response, response["Payload"].read()
    return RepublishResult.model_validate_json(response["Payload"].read())


def listed(shop: Shop) -> list[dict[str, Any]]:
    response = shop.client.http.get("/admin/unreadable-records", headers=shop.headers("admin"))
    assert response.status_code == 200, response.body
    return response.json_body["items"]


def unreadable_completion_of(order_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A publisher bug that only one order's completion meets (its images are read, then the code raises)."""
    transition = events.order_transition

    def buggy(old: Order | None, new: Order | None) -> Any:
        if new is not None and new.order_id == order_id and new.status == "COMPLETED":
            raise KeyError("template")
        return transition(old, new)

    monkeypatch.setattr(events, "order_transition", buggy)


def test_a_record_that_cannot_be_read_is_set_aside_and_the_records_behind_it_are_published(
    shop: Shop, local_aws: LocalAws, spy: BusSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = shop.place_ok([("MUG-1", 1)], who="carol")["order_id"]
    assert shop.wait_checkout(first) == "SUCCEEDED"
    second = shop.place_ok([("MUG-1", 1)], who="dave")["order_id"]
    assert shop.wait_checkout(second) == "SUCCEEDED"
    unreadable_completion_of(first, monkeypatch)

    local_aws.deliver_events()

    # The second order's records came after the unreadable one in the same shard: published.
    assert [kind for kind, _ in spy.of_order(second)] == ["OrderPlaced", "OrderCompleted"]
    assert [kind for kind, _ in spy.of_order(first)] == ["OrderPlaced"]
    assert local_aws.deliver_events() == 0  # nothing is held back for a retry
    [record] = unreadable_records.open_records()
    assert (record.source, record.keys, record.status, record.error, record.attempts) == (
        "orders",
        {"order_id": first},
        "OPEN",
        "KeyError",
        1,
    )
    assert record.record["dynamodb"]["NewImage"]["status"] == {"S": "COMPLETED"}
    [shown] = listed(shop)
    assert (shown["record_id"], shown["status"], shown["keys"]) == (record.record_id, "OPEN", {"order_id": first})


def test_the_republisher_publishes_it_with_its_own_event_id_once_the_publisher_is_fixed(
    shop: Shop, local_aws: LocalAws, spy: BusSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = shop.place_ok([("MUG-1", 1)], who="carol")["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    version = shop.order(order_id).version
    unreadable_completion_of(order_id, monkeypatch)
    local_aws.deliver_events()

    # Still broken: nothing is published, one more failed read is counted.
    assert republish(local_aws) == RepublishResult(published=0, still_unreadable=1)
    [record] = unreadable_records.open_records()
    assert record.attempts == 2
    assert notifications_for(order_id) == []

    monkeypatch.undo()  # the fixed publisher is deployed
    assert republish(local_aws) == RepublishResult(published=1, still_unreadable=0)
    local_aws.deliver_events()

    assert spy.of_order(order_id) == [
        ("OrderPlaced", f"{order_id}:PLACED"),
        ("OrderCompleted", f"{order_id}:COMPLETED:{version}"),
    ]
    assert [email.template for email in notifications_for(order_id)] == ["order-completed"]
    assert unreadable_records.open_records() == []
    [published] = listed(shop)
    assert (published["status"], published["attempts"]) == ("PUBLISHED", 2)
    assert published["published_at"] is not None
    # A later run has nothing to do; the record stays as the audit of what happened.
    assert republish(local_aws) == RepublishResult(published=0, still_unreadable=0)
    assert len(spy.of_order(order_id)) == 2


def test_an_item_in_its_own_partition_it_cannot_read_does_not_stop_the_republisher(
    shop: Shop, local_aws: LocalAws, spy: BusSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = shop.place_ok([("MUG-1", 1)], who="carol")["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    unreadable_completion_of(order_id, monkeypatch)
    local_aws.deliver_events()
    monkeypatch.undo()
    # Sorted before the real one, and no UnreadableRecord: a run that stopped on it would publish nothing, ever.
    local_aws.client("dynamodb").put_item(
        TableName=local_aws.table("OperationsTable"),
        Item={"pk": {"S": "UNREADABLE_RECORD"}, "sk": {"S": "0-hand-written"}, "status": {"S": "OPEN"}},
    )

    assert republish(local_aws) == RepublishResult(published=1, still_unreadable=0)
    local_aws.deliver_events()
    assert [kind for kind, _ in spy.of_order(order_id)] == ["OrderPlaced", "OrderCompleted"]


def test_an_order_item_no_version_of_the_shop_wrote_is_set_aside(shop: Shop, local_aws: LocalAws, spy: BusSpy) -> None:
    # Written behind the shop's back (a hand edit, a bad migration): its image is not an Order.
    local_aws.client("dynamodb").put_item(
        TableName=local_aws.table("OrdersTable"),
        Item={"order_id": {"S": "hand-written"}, "status": {"S": "SHIPPED"}},
    )
    placed = shop.place_ok([("MUG-1", 1)])["order_id"]
    assert shop.wait_checkout(placed) == "SUCCEEDED"

    local_aws.deliver_events()

    assert [kind for kind, _ in spy.of_order(placed)] == ["OrderPlaced", "OrderCompleted"]
    [record] = unreadable_records.open_records()
    assert (record.keys, record.error) == ({"order_id": "hand-written"}, "ValidationError")


@pytest.mark.parametrize(
    ("filler", "images_dropped"),
    [
        (lambda: "x" * 250_000, False),  # compresses well: kept whole, compressed
        (lambda: base64.b64encode(os.urandom(187_500)).decode(), True),  # random: its images cannot be kept
    ],
    ids=["compressible", "incompressible"],
)
def test_an_unreadable_record_too_large_for_one_item_is_still_set_aside(
    shop: Shop, local_aws: LocalAws, spy: BusSpy, filler: Callable[[], str], images_dropped: bool
) -> None:
    """A MODIFY record of an item written behind the shop's back carries two 250 KB images: 500 KB, and
    one item holds 400 KB. Storing it failed at every retry and the orders behind it were never
    published (a helper's probe)."""
    dynamodb, table = local_aws.client("dynamodb"), local_aws.table("OrdersTable")
    for _ in range(2):  # the second put is a MODIFY: its record has the old image and the new
        dynamodb.put_item(
            TableName=table,
            Item={"order_id": {"S": "hand-written"}, "status": {"S": "SHIPPED"}, "notes": {"S": filler()}},
        )
    placed = shop.place_ok([("MUG-1", 1)])["order_id"]
    assert shop.wait_checkout(placed) == "SUCCEEDED"

    local_aws.deliver_events()

    assert [kind for kind, _ in spy.of_order(placed)] == ["OrderPlaced", "OrderCompleted"]
    assert local_aws.deliver_events() == 0
    kept = unreadable_records.open_records()
    # The INSERT (one image) is kept whole; the MODIFY (two) whole or without its images.
    assert {record.keys["order_id"] for record in kept} == {"hand-written"}
    assert [record.images_dropped for record in kept] == [False, images_dropped]
    modify = kept[1].record["dynamodb"]
    assert ("NewImage" in modify, kept[1].record["eventName"]) == (not images_dropped, "MODIFY")
    assert republish(local_aws) == RepublishResult(published=0, still_unreadable=2)


def _dismiss(shop: Shop, record_id: str, body: Any, who: str = "admin") -> Any:
    return shop.client.http.post(
        f"/admin/unreadable-records/{record_id}/dismiss",
        headers={**shop.headers(who), "Content-Type": "application/json"},
        body=json.dumps(body),
    )


def test_an_operator_dismisses_a_record_that_will_never_be_published(shop: Shop, local_aws: LocalAws) -> None:
    """A record whose event cannot be rebuilt (kept without its images, or junk written behind the
    shop's back) stayed OPEN for good, and the alarm with it: nothing closed it but deleting the item."""
    local_aws.client("dynamodb").put_item(
        TableName=local_aws.table("OrdersTable"), Item={"order_id": {"S": "hand-written"}, "status": {"S": "SHIPPED"}}
    )
    local_aws.deliver_events()
    [record] = unreadable_records.open_records()

    dismissed = _dismiss(shop, record.record_id, {"reason": "junk from a bad migration; item deleted"})

    assert dismissed.status_code == 200, dismissed.body
    assert (dismissed.json_body["status"], dismissed.json_body["dismissed_by"]) == ("DISMISSED", "admin")
    assert dismissed.json_body["dismissal_reason"] == "junk from a bad migration; item deleted"
    assert republish(local_aws) == RepublishResult(published=0, still_unreadable=0)  # the alarm's level is 0
    assert [item["status"] for item in listed(shop)] == ["DISMISSED"]
    again = _dismiss(shop, record.record_id, {"reason": "asked twice"})
    assert (again.status_code, again.json_body) == (200, dismissed.json_body)  # as it is: the first reason kept


def test_a_dismissal_that_cannot_apply_is_a_clean_4xx_and_changes_nothing(shop: Shop, local_aws: LocalAws) -> None:
    local_aws.client("dynamodb").put_item(
        TableName=local_aws.table("OrdersTable"), Item={"order_id": {"S": "hand-written"}, "status": {"S": "SHIPPED"}}
    )
    local_aws.deliver_events()
    [record] = unreadable_records.open_records()
    refusals = {
        "no reason": (_dismiss(shop, record.record_id, {}), 400),
        "empty reason": (_dismiss(shop, record.record_id, {"reason": ""}), 400),
        "two lines": (_dismiss(shop, record.record_id, {"reason": "a\nb"}), 400),
        "unknown field": (_dismiss(shop, record.record_id, {"reason": "r", "force": True}), 400),
        "a customer": (_dismiss(shop, record.record_id, {"reason": "r"}, who="alice"), 403),
        "no such record": (_dismiss(shop, "orders-999", {"reason": "r"}), 404),
        "not a record id": (_dismiss(shop, "carts-1", {"reason": "r"}), 400),
    }
    for name, (response, status) in refusals.items():
        assert (response.status_code, response.headers["Content-Type"]) == (status, "application/problem+json"), name
    assert [item.status for item in unreadable_records.open_records()] == ["OPEN"]


def test_a_published_record_cannot_be_dismissed(
    shop: Shop, local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = shop.place_ok([("MUG-1", 1)])["order_id"]
    unreadable_completion_of(order_id, monkeypatch)
    assert shop.wait_checkout(order_id) == "SUCCEEDED"
    local_aws.deliver_events()
    monkeypatch.undo()  # the fixed publisher is deployed
    assert republish(local_aws) == RepublishResult(published=1, still_unreadable=0)
    [record] = [item for item in listed(shop) if item["status"] == "PUBLISHED"]

    refused = _dismiss(shop, record["record_id"], {"reason": "too late"})

    assert (refused.status_code, refused.json_body["type"]) == (409, "urn:shop:problem:unreadable-record-published")
    assert [item["status"] for item in listed(shop)] == ["PUBLISHED"]


def test_a_record_delivered_twice_is_set_aside_once(shop: Shop, local_aws: LocalAws) -> None:
    # Lambda's delivery is at least once: the same record again counts a failed read, no second item.
    _duplicate_stream_deliveries(local_aws, "PublishOrderEventsFunction")
    local_aws.client("dynamodb").put_item(
        TableName=local_aws.table("OrdersTable"),
        Item={"order_id": {"S": "hand-written"}, "status": {"S": "SHIPPED"}},
    )

    local_aws.deliver_events()

    [record] = unreadable_records.open_records()
    assert (record.keys, record.attempts) == ({"order_id": "hand-written"}, 2)


def test_a_failure_to_publish_is_still_retried_not_set_aside(
    shop: Shop, local_aws: LocalAws, spy: BusSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shop.errors import EventPublishFailed
    from shop.repositories import event_bus

    def refuse(event: Any) -> None:
        raise EventPublishFailed("throttled")

    monkeypatch.setattr(event_bus, "put", refuse)
    order_id = shop.place_ok([("MUG-1", 1)])["order_id"]
    assert shop.wait_checkout(order_id) == "SUCCEEDED"

    local_aws.deliver_events()
    assert unreadable_records.open_records() == []
    monkeypatch.undo()
    local_aws.deliver_events()  # the same records again, from the first that failed
    assert [kind for kind, _ in spy.of_order(order_id)] == ["OrderPlaced", "OrderCompleted"]


def set_price_amount(local_aws: LocalAws, sku: str, value: dict[str, str]) -> None:
    """The product item's price written behind the shop's back (a hand edit, a bad migration, its repair)."""
    local_aws.client("dynamodb").update_item(
        TableName=local_aws.table("ProductsTable"),
        Key={"sku": {"S": sku}},
        UpdateExpression="SET price_amount = :price",
        ExpressionAttributeValues={":price": value},
    )


def move_counter(local_aws: LocalAws, sku: str, delta: int) -> None:
    """The SKU's counter moves without the catalog reading its product (the sweeper releasing a hold,
    say): one stock stream record."""
    local_aws.client("dynamodb").update_item(
        TableName=local_aws.table("StockTable"),
        Key={"sku": {"S": sku}, "shard": {"N": "0"}},
        UpdateExpression="ADD available :delta",
        ExpressionAttributeValues={":delta": {"N": str(delta)}},
    )


def test_a_stock_record_whose_product_item_cannot_be_read_is_set_aside_and_the_falls_behind_it_go_on(
    local_aws: LocalAws,
) -> None:
    seed_product("LAMP-A", stock=9)
    seed_product("LAMP-B", stock=9)
    local_aws.deliver_events()
    set_price_amount(local_aws, "LAMP-A", {"S": "twelve"})
    move_counter(local_aws, "LAMP-A", -5)  # 4: its record's judging reads the product item, and fails
    _adjust("LAMP-B", -5)  # 4: a fall of another SKU behind it in the stream

    local_aws.deliver_events()

    # Before, the record failed at every retry (its act raised ValueError) and LAMP-B's fall waited behind it.
    assert _alerts("LAMP-B") == [("LAMP-B:STOCK_LOW:1", 4)] and _alerts("LAMP-A") == []
    assert local_aws.deliver_events() == 0  # nothing is held back for a retry
    [record] = unreadable_records.open_records()
    assert (record.source, record.keys, record.status, record.error, record.attempts) == (
        "stock",
        {"sku": "LAMP-A", "shard": "0"},
        "OPEN",
        "RecordUnreadable",
        1,
    )


def test_the_republisher_announces_the_fall_once_the_product_item_is_repaired(local_aws: LocalAws) -> None:
    seed_product("LAMP-A", stock=9, price=1000)
    local_aws.deliver_events()
    set_price_amount(local_aws, "LAMP-A", {"S": "twelve"})
    move_counter(local_aws, "LAMP-A", -5)  # 4
    local_aws.deliver_events()

    # Still damaged: one more failed read is counted (before, the run failed on it, and on every later run).
    assert republish(local_aws) == RepublishResult(published=0, still_unreadable=1)
    [record] = unreadable_records.open_records()
    assert (record.error, record.attempts) == ("RecordUnreadable", 2)

    set_price_amount(local_aws, "LAMP-A", {"N": "1000"})  # an operator repairs the item
    assert republish(local_aws) == RepublishResult(published=1, still_unreadable=0)
    local_aws.deliver_events()
    assert _alerts("LAMP-A") == [("LAMP-A:STOCK_LOW:1", 4)]
    assert unreadable_records.open_records() == []


def test_counters_below_zero_are_set_aside_and_announced_once_repaired(local_aws: LocalAws) -> None:
    """Counters the shop never takes below 0, hand-edited to -3: no StockLow can say so (its
    ``available`` is at least 0). The record failed at every retry, and its claim of the fall kept
    -3, so even a repair did not free the SKUs behind it (a helper's probe)."""
    seed_product("LAMP-A", stock=9)
    seed_product("LAMP-B", stock=9)
    local_aws.deliver_events()
    move_counter(local_aws, "LAMP-A", -12)  # -3
    _adjust("LAMP-B", -5)  # 4: a fall of another SKU behind it in the stream

    local_aws.deliver_events()

    assert _alerts("LAMP-B") == [("LAMP-B:STOCK_LOW:1", 4)] and _alerts("LAMP-A") == []
    assert local_aws.deliver_events() == 0
    [record] = unreadable_records.open_records()
    assert (record.keys, record.error) == ({"sku": "LAMP-A", "shard": "0"}, "RecordUnreadable")
    assert "below 0" in record.detail

    move_counter(local_aws, "LAMP-A", +5)  # an operator repairs the counter: 2, a fall below the threshold
    assert republish(local_aws) == RepublishResult(published=1, still_unreadable=0)
    local_aws.deliver_events()
    assert _alerts("LAMP-A") == [("LAMP-A:STOCK_LOW:1", 2)]


def test_a_busy_catalog_is_still_retried_not_set_aside(local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch) -> None:
    from shop.errors import TransientError
    from shop.repositories import catalog

    def busy(sku: str) -> Any:
        raise TransientError("DynamoDB is busy (ThrottlingException); retry")

    seed_product("LAMP-A", stock=9)
    local_aws.deliver_events()
    _adjust("LAMP-A", -5)  # 4
    monkeypatch.setattr(catalog, "get_product_info", busy)

    local_aws.deliver_events()
    assert unreadable_records.open_records() == [] and _alerts("LAMP-A") == []
    monkeypatch.undo()
    local_aws.deliver_events()  # the same record again
    assert _alerts("LAMP-A") == [("LAMP-A:STOCK_LOW:1", 4)]


def test_only_admins_list_them(shop: Shop) -> None:
    assert shop.client.http.get("/admin/unreadable-records", headers=shop.headers("alice")).status_code == 403
    assert shop.client.http.get("/admin/unreadable-records").status_code == 401
    bad = shop.client.http.get("/admin/unreadable-records?next_token=forged", headers=shop.headers("admin"))
    assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/problem+json"


def _record(
    sequence_number: str, *, order_id: str | None = None, record: dict[str, Any] | None = None
) -> UnreadableRecord:
    """An OPEN record of OrdersTable's stream, as the publisher sets one aside."""
    return UnreadableRecord(
        record_id=f"orders-{sequence_number}",
        source="orders",
        sequence_number=sequence_number,
        keys={"order_id": order_id or f"o-{sequence_number}"},
        status="OPEN",
        error="ValidationError",
        detail="written behind the shop's back",
        attempts=1,
        set_aside_at="2026-12-02T00:00:00Z",
        last_attempt_at="2026-12-02T00:00:00Z",
        record=record or {"eventName": "INSERT", "dynamodb": {}},
    )


@pytest.mark.parametrize(
    ("records", "notes"),
    [(12, "x" * 1_000_000), (8, "\u00e9" * 190_000)],
    ids=["compressed", "non-ascii"],
)
def test_a_page_of_large_records_stays_within_what_lambda_can_answer(shop: Shop, records: int, notes: str) -> None:
    """Records kept compressed are small in the table and large in a listing: twelve records of a 1 MB
    image each made one page of 12 MB, which Lambda refuses (6 MB at most), so the operators could
    list none of them. Pages now end before 3 MB of JSON, and every record is listed once. The JSON
    is measured as the response writes it: an "é" is six bytes there, and eight records of 380 KB
    of them made a first page of 16 MB (a reviewer's probe)."""
    for number in range(records):
        image = {"order_id": {"S": f"hand-written-{number}"}, "notes": {"S": notes}}
        unreadable_records.set_aside(
            _record(
                f"{number:04d}",
                order_id=f"hand-written-{number}",
                record={"eventName": "MODIFY", "dynamodb": {"NewImage": image, "OldImage": image}},
            )
        )
    listed_ids: list[str] = []
    path = "/admin/unreadable-records?limit=100"
    while True:
        response = shop.client.http.get(path, headers=shop.headers("admin"))
        assert response.status_code == 200
        assert len(response.body) < 4_000_000
        listed_ids += [item["record_id"] for item in response.json_body["items"]]
        if response.json_body["next_token"] is None:
            break
        path = f"/admin/unreadable-records?limit=100&next_token={response.json_body['next_token']}"
    assert listed_ids == [f"orders-{number:04d}" for number in range(records)]


def test_open_records_come_oldest_first_by_sequence_number_as_a_number(local_aws: LocalAws) -> None:
    """Stream sequence numbers are decimal strings that grow in length; as text "10" sorts before
    "9", and the republisher published a newer record before an older one of the same shard."""
    for sequence_number in ("10", "9", "100"):
        unreadable_records.set_aside(_record(sequence_number))

    assert [record.sequence_number for record in unreadable_records.open_records()] == ["9", "10", "100"]
