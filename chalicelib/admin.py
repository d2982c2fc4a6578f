"""Operator routes: every customer's orders (filtered), the sagas' dead letters (list, redrive), the stock
levels and discrepancy letters, the stream records the event publishers set aside, the count of events
the consumers failed on, the payment circuit breaker and the last reconciliation report."""

from __future__ import annotations

from chalice import Blueprint, Response

from chalicelib import http
from shop.auth import Principal
from shop.domain import operations, payments, reconciliation_job, search_reindex
from shop.domain import orders as order_domain
from shop.errors import ReconciliationReportNotFound
from shop.models.base import Record, StrictModel
from shop.models.catalog import SearchReindexQuery, SearchReindexStep, StockLevelPage
from shop.models.common import DEFAULT_PAGE_LIMIT, NextToken, OrderId, PageLimit
from shop.models.events import (
    ConsumerFailuresStatus,
    DismissRecordRequest,
    UnreadableRecord,
    UnreadableRecordId,
    UnreadableRecordPage,
)
from shop.models.orders import DeadLetter, DeadLetterPage, OrderFilter, OrderPage
from shop.models.payments import CircuitBreakerStatus
from shop.models.reconciliation import ReconciliationReport, StockDiscrepancyPage

admin = Blueprint(__name__)

_TAGS = ("operations",)


class LetterPageQuery(StrictModel):
    """A page of an unfiltered listing (dead letters, stock discrepancy letters, stock levels)."""

    limit: PageLimit = DEFAULT_PAGE_LIMIT
    next_token: NextToken | None = None


class CircuitBreakerList(Record):
    items: list[CircuitBreakerStatus]


class AdminOrderQuery(OrderFilter, LetterPageQuery):
    """``GET /admin/orders`` query string: the filter and the page."""


@http.route(
    admin,
    "/admin/orders",
    "GET",
    summary="List every customer's orders, filtered (admin)",
    description=(
        "Filters: `status`, `reason` (the failure reason), `customer` (the customer id), `since` and `until` "
        "(RFC 3339 date-times bounding the creation time, inclusive, each an instant within years 1-9999 in UTC; "
        "`since` must not be after `until`). "
        "Bounds finer than a millisecond (stored times have milliseconds) never widen the range: `since` "
        "rounds up, `until` down. "
        "With `customer`, or a settled `status` (COMPLETED, CANCELLED, REFUNDED, NEEDS_ATTENTION), the orders "
        "come newest first from an index. An open `status` reads the index of open orders, which holds them "
        "in no overall order, and with no filter every order is scanned: there each page is sorted on its own. "
        f"A page holds at most {order_domain.MAX_ORDERS_PER_PAGE} orders whatever `limit` asks, and "
        "may hold fewer than that while a `next_token` follows; pass it back with the same filters."
    ),
    auth="admin",
    query=AdminOrderQuery,
    responses={200: OrderPage},
    tags=_TAGS,
)
def list_all_orders(query: AdminOrderQuery, principal: Principal) -> Response:
    # Validated already, as the query: a second validation of the stored (rounded) bounds would refuse a
    # range inside one millisecond that the instants as given allow.
    found = OrderFilter.model_construct(**query.model_dump(include=set(OrderFilter.model_fields)))
    return http.json_response(order_domain.list_all_orders(found, limit=query.limit, next_token=query.next_token))


@http.route(
    admin,
    "/admin/stock",
    "GET",
    summary="Every product's stock level, low stock flagged (admin)",
    description=(
        "Active and inactive products with their available units; `low_stock` when `available` is at or below "
        "`low_stock_threshold`."
    ),
    auth="admin",
    query=LetterPageQuery,
    responses={200: StockLevelPage},
    tags=_TAGS,
)
def stock_levels(query: LetterPageQuery, principal: Principal) -> Response:
    return http.json_response(operations.stock_levels(limit=query.limit, next_token=query.next_token))


@http.route(
    admin,
    "/admin/dead-letters",
    "GET",
    summary="List the sagas' dead letters (admin)",
    description="Orders whose compensation failed after its retries; each is NEEDS_ATTENTION until redriven.",
    auth="admin",
    query=LetterPageQuery,
    responses={200: DeadLetterPage},
    tags=_TAGS,
)
def list_dead_letters(query: LetterPageQuery, principal: Principal) -> Response:
    return http.json_response(operations.list_dead_letters(limit=query.limit, next_token=query.next_token))


@http.route(
    admin,
    "/admin/dead-letters/{order_id}/redrive",
    "POST",
    summary="Redrive a dead-lettered saga (admin)",
    description=(
        "Restarts the saga where it failed (compensation, completion or refund); every step is idempotent. "
        "Asking again while the redrive runs, or once it is resolved, starts nothing new."
    ),
    auth="admin",
    path_params={"order_id": OrderId},
    responses={202: DeadLetter},
    errors=(404, 409),
    tags=_TAGS,
)
def redrive_dead_letter(order_id: str, principal: Principal) -> Response:
    return http.json_response(operations.redrive(order_id), status=202)


@http.route(
    admin,
    "/admin/stock-discrepancies",
    "GET",
    summary="List the stock discrepancy letters (admin)",
    description=(
        "SKUs whose stock equation (initial + adjustments = available + held + committed, never negative) did not "
        "hold at a reconciliation run. Each stays OPEN until a run finds the SKU consistent again (an operator "
        "found and undid the cause), then RESOLVED. No redrive applies: a SKU belongs to no saga."
    ),
    auth="admin",
    query=LetterPageQuery,
    responses={200: StockDiscrepancyPage},
    tags=_TAGS,
)
def list_stock_discrepancies(query: LetterPageQuery, principal: Principal) -> Response:
    return http.json_response(operations.list_stock_discrepancies(limit=query.limit, next_token=query.next_token))


@http.route(
    admin,
    "/admin/unreadable-records",
    "GET",
    summary="List the stream records the event publishers set aside (admin)",
    description=(
        "Table stream records a publisher could not read (its images or keys are not what it reads), kept whole "
        "so that the records behind them were published. Every quarter of an hour each OPEN one is read again; "
        "once a fixed publisher is deployed it is published, late, with the event id and time it always had, "
        "and becomes PUBLISHED. One that will never be published (kept without its images, or junk written behind "
        "the shop's back) an operator dismisses. A page ends before 3 MB of JSON, whatever the limit (a record "
        "kept compressed can be a thousand times its stored size), and a record larger than that is a page of "
        "its own: follow `next_token` until it is null."
    ),
    auth="admin",
    query=LetterPageQuery,
    responses={200: UnreadableRecordPage},
    tags=_TAGS,
)
def list_unreadable_records(query: LetterPageQuery, principal: Principal) -> Response:
    return http.json_response(operations.list_unreadable_records(limit=query.limit, next_token=query.next_token))


@http.route(
    admin,
    "/admin/unreadable-records/{record_id}/dismiss",
    "POST",
    summary="Dismiss a stream record set aside that will never be published (admin)",
    description=(
        "OPEN -> DISMISSED with the operator and the reason: the republisher reads it no more and the alarm's "
        "level stops counting it. For a record kept without its images (`images_dropped`), or one whose item was "
        "junk written behind the shop's back, once the operator has done what its event would have asked. "
        "Dismissing it again answers it as it is; a PUBLISHED record is 409."
    ),
    auth="admin",
    path_params={"record_id": UnreadableRecordId},
    body=DismissRecordRequest,
    responses={200: UnreadableRecord},
    errors=(404, 409),
    tags=_TAGS,
)
def dismiss_unreadable_record(record_id: str, body: DismissRecordRequest, principal: Principal) -> Response:
    return http.json_response(operations.dismiss_unreadable_record(record_id, body.reason, actor=principal.subject))


@http.route(
    admin,
    "/admin/consumer-failures",
    "GET",
    summary="Count the events the consumers failed on (admin)",
    description=(
        "Events a consumer (the notifier, the low-stock recorder, the stopped-saga settler) still failed on after "
        "Lambda's retries, or that EventBridge could not deliver, wait in ConsumerFailuresQueue for 14 days. Every "
        "quarter of an hour each is handed back to its function; it leaves the queue once the function takes it. "
        "The counts are SQS's, approximate."
    ),
    auth="admin",
    responses={200: ConsumerFailuresStatus},
    tags=_TAGS,
)
def consumer_failures(principal: Principal) -> Response:
    return http.json_response(operations.consumer_failures_status())


@http.route(
    admin,
    "/admin/circuit-breakers",
    "GET",
    summary="Circuit breakers' state (admin)",
    auth="admin",
    responses={200: CircuitBreakerList},
    tags=_TAGS,
)
def circuit_breakers(principal: Principal) -> Response:
    return http.json_response(CircuitBreakerList(items=[payments.circuit_breaker_status()]))


@http.route(
    admin,
    "/admin/reconciliation",
    "GET",
    summary="The last reconciliation report (admin)",
    description=(
        "When the scheduled reconciliation last ran, what it checked, every discrepancy found (order or SKU, "
        "what disagrees) and what was done about it (repaired, dead-lettered or reported). 404 before the first run."
    ),
    auth="admin",
    responses={200: ReconciliationReport},
    errors=(404,),
    tags=_TAGS,
)
def reconciliation_report(principal: Principal) -> Response:
    report = reconciliation_job.last_report()
    if report is None:
        raise ReconciliationReportNotFound("the reconciliation has not run yet")
    return http.json_response(report)


@http.route(
    admin,
    "/admin/search/reindex",
    "POST",
    summary="Rebuild the product search index, a page per call (admin)",
    description=(
        "For a change to the search's text rules: products saved before it keep the terms of the old rules until "
        "saved again. Call without a token, then again with each `next_token` answered until it is null: first "
        f"every product, a page of {search_reindex.PRODUCTS_PER_CALL} per call, each active one's terms written as "
        f"the current rules make them (`stage` `terms`), then every index item, {search_reindex.INDEX_ITEMS_PER_CALL} "
        "per call, each term no product has now deleted (`prune`). A product whose text changed during a call is "
        "left alone (its own write kept its terms in step) and listed in `changed_meanwhile`. Searches keep working "
        "throughout; a call repeated, or a whole rebuild run again, changes nothing more."
    ),
    auth="admin",
    query=SearchReindexQuery,
    responses={200: SearchReindexStep},
    tags=_TAGS,
)
def reindex_search(query: SearchReindexQuery, principal: Principal) -> Response:
    return http.json_response(search_reindex.reindex_search(query.next_token))
