"""Releases that race, with the purchase units they free: a release is conditioned on the status it
read, so a second release, the sweeper or a commit that lands between its read and its write moves
neither stock nor a customer's counted units twice. (The fidelity tier races releases on stock alone.)"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from shop.domain import inventory
from shop.models.common import CheckoutLine
from shop.models.inventory import Reservation
from shop.repositories import inventory as repository
from tests.conftest import LocalAws, seed_product
from tests.service.orders_helpers import available
from tests.service.test_purchase_limits import counted

LINES = [CheckoutLine(sku="DROP-1", quantity=2, purchase_limit=5), CheckoutLine(sku="MUG-1", quantity=1)]


@pytest.fixture(autouse=True)
def _stock(local_aws: LocalAws) -> None:
    seed_product("DROP-1", stock=10)
    seed_product("MUG-1", stock=10)


def _both_read_before_either_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of two threads' first read of the reservation waits for the other's."""
    barrier = threading.Barrier(2, timeout=10)
    read = repository.get_reservation
    readers: set[int] = set()
    lock = threading.Lock()

    def reading(reservation_id: str) -> Reservation | None:
        found = read(reservation_id)
        with lock:
            first = threading.get_ident() not in readers
            readers.add(threading.get_ident())
        if first:
            barrier.wait()
        return found

    monkeypatch.setattr(repository, "get_reservation", reading)


def _concurrently(*calls: Callable[[], object]) -> None:
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors


def test_two_releases_that_read_at_once_return_the_stock_and_free_the_units_once(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory.reserve("o-1", LINES, customer_id="carol")
    assert counted(local_aws, "carol", "DROP-1") == 2
    _both_read_before_either_writes(monkeypatch)

    _concurrently(lambda: inventory.release("o-1"), lambda: inventory.release("o-1"))

    assert (available("DROP-1"), available("MUG-1")) == (10, 10)
    assert counted(local_aws, "carol", "DROP-1") == 0


def test_the_sweeper_and_a_compensation_that_read_at_once_release_once(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = inventory.reserve("o-2", LINES, customer_id="carol", now=1_000)
    _both_read_before_either_writes(monkeypatch)
    lapsed = int(held.expires_at or 0) + 1

    _concurrently(lambda: inventory.release("o-2"), lambda: inventory.release_expired(lapsed))

    assert (available("DROP-1"), available("MUG-1")) == (10, 10)
    assert counted(local_aws, "carol", "DROP-1") == 0


def test_a_commit_between_the_sweepers_read_and_its_write_wins_and_keeps_the_units(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = inventory.reserve("o-3", LINES, customer_id="carol", now=1_000)
    read = repository.get_reservation

    def read_then_commit(reservation_id: str) -> Reservation | None:
        found = read(reservation_id)
        monkeypatch.setattr(repository, "get_reservation", read)
        inventory.commit(reservation_id)  # lands after the sweeper read RESERVED
        return found

    monkeypatch.setattr(repository, "get_reservation", read_then_commit)

    assert inventory.release_expired(int(held.expires_at or 0) + 1).released == 0
    committed = repository.get_reservation("o-3")
    assert committed is not None and committed.status == "COMMITTED"
    assert (available("DROP-1"), available("MUG-1")) == (8, 9)
    assert counted(local_aws, "carol", "DROP-1") == 2
