"""Reconciliation: what the invariant checker found, as operators read it (``GET /admin/reconciliation``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shop.models.base import Record

DiscrepancyKind = Literal[
    "stock_negative",
    "stock_mismatch",
    "reservation_held_past_expiry",
    "order_not_settled",
    "execution_running",
    "duplicate_idempotency_key",
    "completed_not_captured",
    "completed_reservation_not_committed",
    "cancelled_but_captured",
    "cancelled_authorization_not_voided",
    "cancelled_stock_not_returned",
    "refunded_amount_mismatch",
    "refunded_stock_not_returned",
    "attention_without_dead_letter",
    "payment_ledger_behind_provider",
    "payment_ledger_mismatch",
    "provider_operation_duplicated",
    "record_unreadable",
    "redrive_stalled",
    "purchase_count_mismatch",
]
# What the job did about a discrepancy.
DiscrepancyAction = Literal["repaired", "dead_lettered", "dead_letter_already_open", "left_for_next_run", "reported"]


class Discrepancy(Record):
    """One invariant that does not hold: on an order, on a SKU's stock, or on a customer's purchase count."""

    kind: DiscrepancyKind
    order_id: str | None = None
    sku: str | None = None
    customer_id: str | None = Field(default=None, description="The customer whose purchase count is wrong.")
    detail: str = Field(description="What disagrees, with the numbers on both sides.")
    action: DiscrepancyAction = "reported"


class UnreadableItem(Record):
    """An item of an audited table that is not a record the shop writes (its model refuses it): written
    behind the shop's back, or by a version that wrote what this one cannot read."""

    table: str = Field(description="The table's role, e.g. OrdersTable.")
    key: dict[str, str] = Field(
        description="The item's key attributes, as text (and an order's customer_id, where the item names one)."
    )
    error: str = Field(description="Why it could not be read: the error's class and message, truncated.")

    @property
    def order_id(self) -> str | None:
        """The order it belongs to: the key of an order, its payment and its reservation is the order's id."""
        return self.key.get("order_id") or self.key.get("reservation_id")

    @property
    def sku(self) -> str | None:
        """The product it belongs to (a stock counter's, or a purchase counter's)."""
        return self.key.get("sku")

    @property
    def customer_id(self) -> str | None:
        """The customer it belongs to (a purchase counter's)."""
        return self.key.get("customer_id")


class CheckedCounts(Record):
    """How many of each kind of record the run examined (settled orders only, for the order checks)."""

    products: int = 0
    reservations: int = 0
    orders: int = 0
    payments: int = 0
    provider_operations: int = 0
    dead_letters: int = 0
    # The customers' purchase counters judged (those of customers with every order settled).
    purchase_counters: int = 0


class ReconciliationReport(Record):
    """The last run of the invariant checker: when, what it checked, every discrepancy and what was done."""

    started_at: str
    finished_at: str
    # Orders last changed after this moment were left alone: a saga may still be moving them.
    settled_before: str
    checked: CheckedCounts
    discrepancies: list[Discrepancy]
    # Discrepancies found beyond the ones listed (the stored report is capped).
    omitted: int = 0
    resolved_dead_letters: list[str] = Field(
        default_factory=list,
        description=(
            "Orders whose open dead letter this run resolved: settled (COMPLETED, CANCELLED or REFUNDED), unchanged "
            "since the cutoff, and with no discrepancy left (an operator repaired the books, or the letter was opened "
            "while a refund settled the order). At most as many as the discrepancies listed; the rest are counted "
            "in `resolved_dead_letters_omitted`."
        ),
    )
    # Letters resolved beyond the ones listed: an incident's repair can resolve thousands in one run,
    # and the stored report is one item (400 KB; 11,000 order ids passed it, and the run's report was lost).
    resolved_dead_letters_omitted: int = 0

    def summary(self) -> ReconciliationSummary:
        """What the scheduled run answers: the stored report has every detail, the invocation the counts."""
        return ReconciliationSummary(
            started_at=self.started_at,
            checked=self.checked,
            discrepancies=len(self.discrepancies) + self.omitted,
        )


class ReconciliationSummary(Record):
    started_at: str
    checked: CheckedCounts
    # Every discrepancy found, listed in the stored report or not.
    discrepancies: int


StockLetterStatus = Literal["OPEN", "RESOLVED"]


class StockDiscrepancyLetter(Record):
    """A SKU whose stock equation did not hold: open until a reconciliation finds it consistent again
    (an operator found and undid the cause). No redrive applies: it belongs to no order."""

    sku: str
    status: StockLetterStatus
    kinds: list[DiscrepancyKind] = Field(
        description="What the last run that saw it found (stock_negative, stock_mismatch)."
    )
    detail: str = Field(description="The numbers on both sides of the stock equation, as the last run saw them.")
    first_seen_at: str
    last_seen_at: str
    runs_seen: int = Field(ge=1, description="Reconciliation runs that found it, since it was first opened.")
    resolved_at: str | None = None


class StockDiscrepancyPage(Record):
    items: list[StockDiscrepancyLetter]
    next_token: str | None
