"""Purchase counters against a real DynamoDB engine and against moto: the same tests on both.

A limited line's units are counted in the reservation's own transaction (``units + q <= limit``
as a condition) and given back in the release's; these check that the engine keeps them exact:
the cancellation reasons line up with the actions, a refused transaction changes nothing, and
concurrent orders of one customer never get past the limit together.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from shop import aws
from shop.domain import inventory
from shop.errors import PurchaseLimitExceeded, ReservationConflict
from shop.models.common import CheckoutLine
from shop.models.inventory import Reservation, StoredLine
from shop.repositories import inventory as repository
from shop.repositories import purchases
from tests.fidelity.conftest import Backend
from tests.fidelity.test_inventory_repository import NOW, retrying


def limited(sku: str, quantity: int, limit: int) -> CheckoutLine:
    return CheckoutLine(sku=sku, quantity=quantity, purchase_limit=limit)


def counted(backend: Backend, customer: str, sku: str) -> int | None:
    item = backend.client.get_item(
        TableName=backend.table("PurchaseCountsTable"),
        Key={"customer_id": {"S": customer}, "sku": {"S": sku}},
        ConsistentRead=True,
    ).get("Item")
    return int(item["units"]["N"]) if item else None


def test_reserving_counts_a_limited_line_and_nothing_else(backend: Backend) -> None:
    backend.put_product("DROP", 10)
    backend.put_product("MUG", 10)

    inventory.reserve("o-1", [limited("DROP", 2, 3), CheckoutLine(sku="MUG", quantity=1)], customer_id="c")

    assert (counted(backend, "c", "DROP"), counted(backend, "c", "MUG")) == (2, None)
    stored = backend.reservation_item("o-1")
    assert stored is not None and stored["customer_id"] == {"S": "c"}
    assert stored["lines"]["L"][1]["M"] == {
        "sku": {"S": "MUG"},
        "quantity": {"N": "1"},
        "takes": {"L": [{"M": {"shard": {"N": "0"}, "quantity": {"N": "1"}}}]},
    }


def test_over_the_limit_the_transaction_changes_nothing_and_names_the_sku(backend: Backend) -> None:
    backend.put_product("DROP", 10)
    inventory.reserve("o-1", [limited("DROP", 2, 3)], customer_id="c")

    with pytest.raises(PurchaseLimitExceeded) as raised:
        inventory.reserve("o-2", [limited("DROP", 2, 3)], customer_id="c")

    assert raised.value.skus == ["DROP"]
    assert (counted(backend, "c", "DROP"), backend.available("DROP"), backend.reservation_count()) == (2, 8, 1)
    inventory.reserve("o-3", [limited("DROP", 1, 3)], customer_id="c")  # exactly up to the limit
    assert (counted(backend, "c", "DROP"), backend.available("DROP")) == (3, 7)


def test_the_counters_reasons_come_after_the_stock_actions(backend: Backend) -> None:
    backend.put_product("DROP", 1)
    backend.put_product("MUG", 10)
    inventory.reserve("o-1", [limited("MUG", 2, 2)], customer_id="c")
    reservation = Reservation(
        reservation_id="o-2",
        order_id="o-2",
        customer_id="c",
        lines=[
            StoredLine(sku="DROP", quantity=2, purchase_limit=5),
            StoredLine(sku="MUG", quantity=1, purchase_limit=2),
        ],
        status="RESERVED",
        expires_at=NOW,
        created_at="2030-01-01T00:00:00.000Z",
        updated_at="2030-01-01T00:00:00.000Z",
    )

    with pytest.raises(repository.TransactionCancelled) as raised:
        repository.create_reservation(reservation)

    # Every failed condition is reported, each where its action was: DROP short, MUG over its limit.
    codes = [reason.code for reason in raised.value.reasons]
    assert codes == ["None", "ConditionalCheckFailed", "None", "None", "ConditionalCheckFailed"]
    assert (counted(backend, "c", "DROP"), counted(backend, "c", "MUG")) == (None, 2)


def test_releasing_frees_the_units_once_and_a_refund_keeps_them(backend: Backend) -> None:
    backend.put_product("DROP", 10)
    inventory.reserve("cancelled", [limited("DROP", 2, 5)], customer_id="c")
    inventory.reserve("refunded", [limited("DROP", 3, 5)], customer_id="c")
    inventory.commit("refunded")
    assert counted(backend, "c", "DROP") == 5

    for _ in range(2):
        assert inventory.release("cancelled").status == "RELEASED"
        assert inventory.release("refunded", frees_purchase_units=False).status == "RELEASED"

    assert (counted(backend, "c", "DROP"), backend.available("DROP")) == (3, 10)


def test_a_counter_out_of_step_refuses_the_release_and_changes_nothing(backend: Backend) -> None:
    backend.put_product("DROP", 10)
    inventory.reserve("o-1", [limited("DROP", 2, 5)], customer_id="c")
    backend.client.delete_item(
        TableName=backend.table("PurchaseCountsTable"), Key={"customer_id": {"S": "c"}, "sku": {"S": "DROP"}}
    )

    with pytest.raises(ReservationConflict):
        inventory.release("o-1")

    stored = backend.reservation_item("o-1")
    assert stored is not None and stored["status"] == {"S": "RESERVED"}
    assert (counted(backend, "c", "DROP"), backend.available("DROP")) == (None, 8)


def test_one_customers_concurrent_orders_never_get_past_the_limit(backend: Backend) -> None:
    backend.put_product("DROP", 100)
    aws.dynamodb()  # one shared client, as in a warm Lambda

    def reserve(number: int) -> str:
        try:
            retrying(lambda: inventory.reserve(f"o-{number}", [limited("DROP", 1, 3)], customer_id="c"))
        except PurchaseLimitExceeded:
            return "over-limit"
        return "reserved"

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = Counter(pool.map(reserve, range(12)))

    assert outcomes == Counter({"reserved": 3, "over-limit": 9})
    assert (counted(backend, "c", "DROP"), backend.available("DROP"), backend.reservation_count()) == (3, 97, 3)


def test_the_apis_check_reads_what_the_reservations_counted(backend: Backend) -> None:
    backend.put_product("DROP", 10)
    backend.put_product("TEE", 10)
    inventory.reserve("o-1", [limited("DROP", 2, 5), limited("TEE", 1, 5)], customer_id="c")
    inventory.release("o-1")
    inventory.reserve("o-2", [limited("DROP", 3, 5)], customer_id="c")

    assert purchases.counted_units("c", ["DROP", "TEE", "NEVER"]) == {"DROP": 3, "TEE": 0, "NEVER": 0}
    assert purchases.counted_units("someone-else", ["DROP"]) == {"DROP": 0}
