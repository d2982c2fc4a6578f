"""OperationsTable's repositories on moto and on DynamoDB Local: the breaker's compare-and-set with
its window stored as one string, and the stock discrepancy letters (open, keep open, resolve)."""

from __future__ import annotations

from shop.payments.circuit_breaker import BreakerOutcome, BreakerState
from shop.repositories import stock_discrepancies
from shop.repositories.operations import DynamoBreakerStore
from tests.fidelity.conftest import Backend


def test_the_breaker_state_is_a_compare_and_set_and_its_window_round_trips(backend: Backend) -> None:
    store = DynamoBreakerStore()
    assert store.load("fidelity") == BreakerState()
    window = {
        "ord-0:authorize": BreakerOutcome(failed=True, at=1_796_000_000.0, source="cust-0", counted=False),
        "ord-1:authorize": BreakerOutcome(failed=True, at=1_796_000_000.125, source="cust-1"),
        "ord-2:capture": BreakerOutcome(failed=False, at=1_796_000_001.5, source="cust-é"),
    }
    failed_probes = {"mallory": 1_796_000_031.25}
    first = BreakerState(state="OPEN", outcomes=window, opened_at=1_796_000_001.5, failed_probes=failed_probes)
    assert store.replace("fidelity", first, expected_version=0)
    assert not store.replace("fidelity", first, expected_version=0)  # someone stored it first

    loaded = store.load("fidelity")
    assert (loaded.version, loaded.state, loaded.opened_at) == (1, "OPEN", 1_796_000_001.5)
    assert list(loaded.outcomes) == ["ord-0:authorize", "ord-1:authorize", "ord-2:capture"]
    assert loaded.outcomes == window and loaded.failed_probes == failed_probes
    closed = BreakerState(version=loaded.version)
    assert not store.replace("fidelity", closed, expected_version=0)
    assert store.replace("fidelity", closed, expected_version=1)
    reloaded = store.load("fidelity")
    assert (reloaded.outcomes, reloaded.failed_probes, reloaded.version) == ({}, {}, 2)
    # A writer that read version 1 lost to the one that stored 2: its state is not written back.
    assert not store.replace("fidelity", first, expected_version=1)
    assert store.load("fidelity") == reloaded


def test_a_stock_letter_opens_once_counts_its_runs_and_resolves(backend: Backend) -> None:
    assert stock_discrepancies.open_skus() == set()
    assert stock_discrepancies.open_letter("SKU-1", kinds=["stock_mismatch"], detail="3 too many", now="t1")
    assert not stock_discrepancies.open_letter("SKU-1", kinds=["stock_negative"], detail="-1", now="t2")
    assert stock_discrepancies.open_skus() == {"SKU-1"}
    [letter] = stock_discrepancies.list_page(limit=10, start_key=None)[0]
    assert (letter.status, letter.kinds, letter.detail, letter.runs_seen) == ("OPEN", ["stock_negative"], "-1", 2)
    assert (letter.first_seen_at, letter.last_seen_at, letter.resolved_at) == ("t1", "t2", None)

    assert stock_discrepancies.resolve("SKU-1", now="t3")
    assert not stock_discrepancies.resolve("SKU-1", now="t4")  # resolved already
    assert not stock_discrepancies.resolve("SKU-2", now="t4")  # never opened
    assert stock_discrepancies.open_skus() == set()
    [letter] = stock_discrepancies.list_page(limit=10, start_key=None)[0]
    assert (letter.status, letter.resolved_at) == ("RESOLVED", "t3")

    # Drifting again reopens it: a new first sighting is not invented, the runs keep counting.
    assert stock_discrepancies.open_letter("SKU-1", kinds=["stock_mismatch"], detail="again", now="t5")
    [letter] = stock_discrepancies.list_page(limit=10, start_key=None)[0]
    assert (letter.status, letter.resolved_at, letter.first_seen_at, letter.runs_seen) == ("OPEN", None, "t1", 3)
