"""The events' conditional writes (shop.repositories.event_records) on moto and on DynamoDB Local:
a fall of a SKU is claimed once, a redelivered record finds its own claim, a restock re-arms, and the
consumers' records are written once per event id."""

from __future__ import annotations

from shop.models.events import EmailNotification, LowStockAlert
from shop.repositories import event_records
from tests.conftest import notifications_for
from tests.fidelity.conftest import Backend


def test_a_fall_is_claimed_once_and_its_claimant_finds_it_again(backend: Backend) -> None:
    first = event_records.claim_fall("MUG-1", "seq-1", available=3, threshold=5, at="t")
    assert first is not None and (first.fall, first.published) == (1, False)

    # Another record, same fall: nothing. The claimant redelivered: announce it (again).
    assert event_records.claim_fall("MUG-1", "seq-2", available=3, threshold=5, at="t") is None
    again = event_records.claim_fall("MUG-1", "seq-1", available=3, threshold=5, at="t")
    assert again is not None and (again.fall, again.published) == (1, False)

    event_records.mark_published("MUG-1", 1)
    published = event_records.claim_fall("MUG-1", "seq-1", available=3, threshold=5, at="t")
    assert published is not None and published.published


def test_a_restock_rearms_an_announced_fall_and_the_next_fall_is_a_new_one(backend: Backend) -> None:
    assert event_records.claim_fall("MUG-1", "seq-1", available=3, threshold=5, at="t") is not None
    event_records.mark_published("MUG-1", 1)
    assert event_records.rearm("MUG-1", "seq-5") == event_records.Rearm(rearmed_fall=1)
    assert event_records.rearm("MUG-1", "seq-6") == event_records.Rearm()  # not low: nothing to do

    second = event_records.claim_fall("MUG-1", "seq-9", available=3, threshold=5, at="t")
    assert second is not None and (second.fall, second.published) == (2, False)
    assert event_records.rearm("OTHER", "seq-1").pending is None  # never low: no marker is written
    marker = backend.client.get_item(
        TableName=backend.tables["OperationsTable"], Key={"pk": {"S": "stock-low#OTHER"}, "sk": {"S": "marker"}}
    )
    assert "Item" not in marker


def test_a_rearm_on_a_rise_that_was_not_real_is_undone_unless_a_later_fall_came(backend: Backend) -> None:
    assert event_records.claim_fall("MUG-1", "seq-1", available=3, threshold=5, at="t") is not None
    event_records.mark_published("MUG-1", 1)
    assert event_records.rearm("MUG-1", "seq-2").rearmed_fall == 1

    assert event_records.undo_rearm("MUG-1", 1)
    assert event_records.claim_fall("MUG-1", "seq-3", available=3, threshold=5, at="t") is None  # the same fall
    assert not event_records.undo_rearm("MUG-1", 1)  # low already: nothing to undo

    assert event_records.rearm("MUG-1", "seq-4").rearmed_fall == 1
    second = event_records.claim_fall("MUG-1", "seq-5", available=3, threshold=5, at="t")
    assert second is not None and second.fall == 2
    assert not event_records.undo_rearm("MUG-1", 1)  # a later fall was claimed since: it stands


def test_a_fall_not_announced_yet_is_not_rearmed_and_its_claimant_gets_it_back(backend: Backend) -> None:
    """The claimant's put failed and the stock rose before its record came back: the fall is
    announced then, not lost; only then does a restock re-arm."""
    assert event_records.claim_fall("MUG-1", "seq-1", available=3, threshold=5, at="t") is not None

    assert (
        event_records.rearm("MUG-1", "seq-2").pending is None
    )  # another record: nothing to announce, nothing re-armed
    pending = event_records.rearm("MUG-1", "seq-1").pending
    assert pending is not None and (pending.fall, pending.published) == (1, False)
    assert event_records.claim_fall("MUG-1", "seq-3", available=3, threshold=5, at="t") is None  # still the same fall

    event_records.mark_published("MUG-1", 1)
    assert event_records.rearm("MUG-1", "seq-1").pending is None
    third = event_records.claim_fall("MUG-1", "seq-4", available=3, threshold=5, at="t")
    assert third is not None and third.fall == 2


def test_a_late_fall_announced_after_a_restock_is_rearmed_with_it(backend: Backend) -> None:
    """The claimant's put failed, the stock rose, and the retried record announces the fall with
    the stock it fell to: publishing it re-arms the SKU, or its next fall would never be announced."""
    fell_at = "2026-12-01T03:00:00.000Z"
    assert event_records.claim_fall("MUG-1", "seq-1", available=4, threshold=5, at=fell_at) is not None
    pending = event_records.rearm("MUG-1", "seq-1").pending
    assert pending is not None
    assert (pending.fall, pending.available, pending.fell_at) == (1, 4, fell_at)

    event_records.mark_published("MUG-1", 1, rearm=True)

    second = event_records.claim_fall("MUG-1", "seq-7", available=2, threshold=5, at="t2")
    assert second is not None and (second.fall, second.published, second.available) == (2, False, 2)


def test_a_fall_above_a_lowered_threshold_leaves_the_next_fall_to_be_claimed(backend: Backend) -> None:
    """Announced at 4 (threshold 5), then the operators lower the threshold to 2: 4 is no longer low,
    so the fall to 2 is a new one (before, the marker waited for a restock above 2 that never came)."""
    assert event_records.claim_fall("MUG-1", "seq-1", available=4, threshold=5, at="t") is not None
    assert event_records.claim_fall("MUG-1", "seq-2", available=4, threshold=5, at="t") is None  # the same fall
    event_records.mark_published("MUG-1", 1)

    second = event_records.claim_fall("MUG-1", "seq-3", available=2, threshold=2, at="t2")
    assert second is not None and (second.fall, second.published, second.available) == (2, False, 2)
    assert event_records.claim_fall("MUG-1", "seq-4", available=2, threshold=2, at="t2") is None  # claimed once
    again = event_records.claim_fall("MUG-1", "seq-3", available=2, threshold=2, at="t2")  # its claimant, redelivered
    assert again is not None and again.fall == 2
    event_records.mark_published("MUG-1", 2)
    assert event_records.claim_fall("MUG-1", "seq-5", available=1, threshold=2, at="t3") is None  # 2 is low by 2


def _at(second: int) -> str:
    return f"2026-12-02T04:00:{second:02d}.000Z"


def test_a_fall_is_judged_by_its_lowest_level_and_only_by_readings_of_it(backend: Backend) -> None:
    """Fall 1 went to 1; restocked and re-armed; fall 2 to 3. A reading of 1 taken during fall 1 and
    judged late must not become fall 2's lowest (a review's probe: it did, and with the threshold
    lowered to 2, the fall to 2 was never announced)."""
    assert event_records.claim_fall("MUG-1", "seq-1", available=4, threshold=5, at=_at(1)) is not None
    assert event_records.claim_fall("MUG-1", "seq-2", available=1, threshold=5, at=_at(2)) is None  # lower: 1
    event_records.mark_published("MUG-1", 1)
    assert event_records.claim_fall("MUG-1", "seq-3", available=2, threshold=2, at=_at(3)) is None  # went to 1
    assert event_records.rearm("MUG-1", "seq-4").pending is None  # restocked above the threshold
    assert event_records.claim_fall("MUG-1", "seq-5", available=3, threshold=5, at=_at(5)) is not None  # fall 2
    event_records.mark_published("MUG-1", 2)
    assert event_records.claim_fall("MUG-1", "seq-stale", available=1, threshold=5, at=_at(2)) is None

    third = event_records.claim_fall("MUG-1", "seq-6", available=2, threshold=2, at=_at(6))
    assert third is not None and (third.fall, third.available) == (3, 2)


def test_a_reading_taken_the_moment_a_fall_was_claimed_is_a_reading_of_that_fall(backend: Backend) -> None:
    """Only a reading older than the fall's claim belongs to an earlier fall: one of the same millisecond
    lowers it, so the fall to a lowered threshold it already went below is not claimed again."""
    assert event_records.claim_fall("MUG-1", "seq-1", available=4, threshold=5, at=_at(1)) is not None
    assert event_records.claim_fall("MUG-1", "seq-2", available=1, threshold=5, at=_at(1)) is None  # lower: 1
    event_records.mark_published("MUG-1", 1)

    assert event_records.claim_fall("MUG-1", "seq-3", available=2, threshold=2, at=_at(3)) is None  # went to 1


def test_a_fall_a_previous_version_claimed_is_judged_by_its_announced_level(backend: Backend) -> None:
    """That version wrote no ``lowest``: the marker's one is an earlier fall's, and judged by it, the
    fall to the lowered threshold was never claimed (a review's probe)."""
    assert event_records.claim_fall("MUG-1", "seq-1", available=1, threshold=5, at=_at(1)) is not None
    event_records.mark_published("MUG-1", 1)
    assert event_records.rearm("MUG-1", "seq-2").pending is None
    # Fall 2 to 4, claimed as the previous version wrote its claim.
    backend.client.update_item(
        TableName=backend.table("OperationsTable"),
        Key={"pk": {"S": "stock-low#MUG-1"}, "sk": {"S": "marker"}},
        UpdateExpression=(
            "SET low = :true, claimed_by = :claimant, published = :true, available = :available, fell_at = :at "
            "ADD fall :one"
        ),
        ExpressionAttributeValues={
            ":true": {"BOOL": True},
            ":claimant": {"S": "seq-3"},
            ":available": {"N": "4"},
            ":at": {"S": _at(3)},
            ":one": {"N": "1"},
        },
    )

    third = event_records.claim_fall("MUG-1", "seq-4", available=2, threshold=3, at=_at(4))
    assert third is not None and (third.fall, third.available) == (3, 2)


def test_a_fall_not_announced_yet_is_kept_for_its_claimant_when_the_threshold_is_lowered(backend: Backend) -> None:
    """Its put failed, then the threshold was lowered: the fall stays its claimant's to announce, no
    other record claims a new one over it."""
    assert event_records.claim_fall("MUG-1", "seq-1", available=4, threshold=5, at="t") is not None  # its put fails

    assert event_records.claim_fall("MUG-1", "seq-2", available=2, threshold=2, at="t2") is None
    pending = event_records.claim_fall("MUG-1", "seq-1", available=2, threshold=2, at="t2")
    assert pending is not None and (pending.fall, pending.published, pending.available) == (1, False, 4)


def test_a_notification_is_queued_once_per_event_id(backend: Backend) -> None:
    email = EmailNotification(
        event_id="o-1:COMPLETED:5",
        customer_id="alice",
        order_id="o-1",
        template="order-completed",
        occurred_at="t0",
        created_at="t",
    )
    assert event_records.add_notification(email) is True
    assert event_records.add_notification(email) is False

    [stored] = notifications_for("o-1")
    assert (stored.event_id, stored.duplicates_ignored) == ("o-1:COMPLETED:5", 1)


def test_a_low_stock_alert_is_recorded_once_per_event_id(backend: Backend) -> None:
    alert = LowStockAlert(
        event_id="MUG-1:STOCK_LOW:1", sku="MUG-1", available=3, threshold=5, occurred_at="t", recorded_at="t"
    )
    assert event_records.add_low_stock_alert(alert) is True
    assert event_records.add_low_stock_alert(alert) is False

    assert [(a.event_id, a.available) for a in event_records.low_stock_alerts()] == [("MUG-1:STOCK_LOW:1", 3)]
