"""What the reconciliation job publishes for the alarms: discrepancies by kind, and the open dead letters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shop.domain import reconciliation_job
from shop.models.orders import DeadLetter
from shop.models.reconciliation import Discrepancy
from shop.observability import metrics

NOW = "2026-01-01T00:00:00Z"


def letter(order_id: str, status: str) -> DeadLetter:
    return DeadLetter.model_validate(
        {
            "order_id": order_id,
            "status": status,
            "resume": "compensate",
            "failed_step": "release_reservation",
            "created_at": NOW,
            "updated_at": NOW,
        }
    )


def discrepancy(order_id: str, action: str) -> Discrepancy:
    return Discrepancy.model_validate(
        {
            "kind": "cancelled_authorization_not_voided",
            "order_id": order_id,
            "detail": "hold still open",
            "action": action,
        }
    )


@pytest.fixture
def published() -> Iterator[None]:
    metrics().clear_metrics()
    yield
    metrics().clear_metrics()


def test_open_letters_are_those_open_plus_those_the_run_opened_once_each() -> None:
    letters = {
        "o-open": letter("o-open", "OPEN"),
        "o-redriving": letter("o-redriving", "REDRIVING"),
        "o-resolved": letter("o-resolved", "RESOLVED"),
    }
    found = [
        discrepancy("o-new", "dead_lettered"),
        discrepancy("o-new", "dead_lettered"),  # two discrepancies, one letter
        discrepancy("o-open", "dead_letter_already_open"),
        discrepancy("o-reported", "reported"),
    ]

    assert reconciliation_job.open_dead_letters(letters, found) == 2


def test_dead_letters_open_is_published_every_run_zero_included(published: None) -> None:
    reconciliation_job._publish([], 0)

    assert metrics().metric_set["DeadLettersOpen"]["Value"] == [0.0]
    assert metrics().metric_set["ReconciliationDiscrepanciesOutstanding"]["Value"] == [0.0]


def test_a_run_publishes_its_open_letters_and_what_it_did_not_repair(published: None) -> None:
    found = [
        discrepancy("o-new", "dead_lettered"),
        discrepancy("o-old", "dead_letter_already_open"),
        discrepancy("o-lag", "repaired"),
    ]

    reconciliation_job._publish(found, 3)

    assert metrics().metric_set["DeadLettersOpen"]["Value"] == [3.0]
    assert metrics().metric_set["ReconciliationDiscrepanciesOutstanding"]["Value"] == [2.0]
