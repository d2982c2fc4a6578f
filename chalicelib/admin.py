"""Operator routes: the sagas' dead letters (list, redrive), the stock discrepancy letters, the payment
circuit breaker and the last reconciliation report."""

from __future__ import annotations

from chalice import Blueprint, Response

from chalicelib import http
from shop.auth import Principal
from shop.domain import operations, payments, reconciliation_job
from shop.errors import ReconciliationReportNotFound
from shop.models.base import Record, StrictModel
from shop.models.common import OrderId
from shop.models.orders import DeadLetter, DeadLetterPage
from shop.models.payments import CircuitBreakerStatus
from shop.models.reconciliation import ReconciliationReport, StockDiscrepancyPage
from shop.pagination import NextToken, PageLimit

admin = Blueprint(__name__)

_TAGS = ("operations",)


class LetterPageQuery(StrictModel):
    """A page of letters (dead letters or stock discrepancy letters)."""

    limit: PageLimit = 20
    next_token: NextToken | None = None


class CircuitBreakerList(Record):
    items: list[CircuitBreakerStatus]


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
