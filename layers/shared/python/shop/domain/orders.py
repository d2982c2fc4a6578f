"""What the API does with orders: place one (idempotently), read, list, request a cancellation.

Placing an order is idempotent twice over. Powertools' idempotency utility answers a repeated
``Idempotency-Key`` (scoped to the caller) with the first response, 409 while the first request
is in flight and 422 for a different body. Underneath, the order id is derived from (caller, key,
body), the order is stored only if absent and the saga is started with name = order id: a retry
after a failure half-way (the idempotency record is deleted when the request fails) finds the
same order and can never start a second saga.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.serialization.pydantic import PydanticSerializer

from shop.auth import Principal
from shop.config import api_settings, feature_switches, runtime_config_settings
from shop.domain import carts, catalog, inventory, order_saga, payments, purchase_limits, totals
from shop.domain import order_lifecycle as lifecycle
from shop.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    OrderNotFound,
    OrdersPaused,
    OrderStateConflict,
    ProductUnavailable,
    SagaNotStarted,
    ShopError,
    TooManyLimitedLines,
    TooManyOrdersInProgress,
    TransientError,
)
from shop.models.base import iso_now
from shop.models.common import CheckoutLine, Line
from shop.models.money import MAX_AMOUNT, Money
from shop.models.orders import (
    FIRST_EPOCH,
    IDEMPOTENCY_TTL_SECONDS,
    TERMINAL,
    CheckoutInput,
    HistoryEntry,
    Order,
    OrderFilter,
    OrderLine,
    OrderPage,
    OrderSubmission,
    OrderView,
    PaymentView,
    PlaceOrderRequest,
)
from shop.observability import logger, metrics
from shop.pagination import decode_token, encode_token
from shop.repositories import orders as repository
from shop.repositories import sagas
from shop.saga_terms import Step

ORDERS_LISTING = "orders"
ALL_ORDERS_LISTING = "all-orders"
DEAD_LETTERS_LISTING = "dead-letters"
_ORDER_ID_NAMESPACE = uuid.UUID("5b0f7a52-3c1e-4d8e-9a57-2f6f5f0c8e11")


# ---------------------------------------------------------------------------- place
def place_order(
    principal: Principal, idempotency_key: str, request: PlaceOrderRequest, lambda_context: Any = None
) -> OrderView:
    """Store a PENDING order priced from the catalog and start its checkout saga.

    While the ``accepting-orders`` switch is off, a new order is refused (OrdersPaused) and nothing
    is kept (Powertools removes the idempotency record of a request that raised, so the same
    request succeeds once orders are accepted); a replay of an order placed before still answers it.
    """
    config = IdempotencyConfig(
        event_key_jmespath="[customer_id, idempotency_key]",
        payload_validation_jmespath="body",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=IDEMPOTENCY_TTL_SECONDS,
        lambda_context=lambda_context,
    )
    # Powertools takes the models as they are: the submission is hashed from its JSON form and
    # the stored response is validated back into an OrderView on a replay.
    place = idempotent_function(
        _place,
        data_keyword_argument="submission",
        persistence_store=_configured_store(config),
        config=config,
        output_serializer=PydanticSerializer(OrderView),
    )
    submission = OrderSubmission(customer_id=principal.subject, idempotency_key=idempotency_key, body=request)
    try:
        placed: OrderView = place(submission=submission)
    except IdempotencyAlreadyInProgressError:
        raise IdempotencyKeyInUse("a request with this Idempotency-Key is still being processed; retry later") from None
    except IdempotencyValidationError:
        raise IdempotencyKeyReused("this Idempotency-Key was used with a different request body") from None
    except IdempotencyPersistenceLayerError as error:
        raise TransientError("the idempotency store is unavailable; retry") from error
    return placed


_store_configuration = threading.Lock()


def _configured_store(config: IdempotencyConfig) -> Any:
    """Powertools' idempotency store, configured in full before this request uses it.

    Its ``configure`` marks the store configured first and then sets the key and payload-hash
    expressions. On Lambda one request at a time runs per process; where requests share a process
    (the local stack's threads, a Lambda that ran handlers concurrently), a second request could see
    the mark before the expressions and store its record without the payload's hash: a later replay
    of the same key and body was then refused as another body (422, seen in a chaos run).
    """
    store = repository.idempotency_store()
    with _store_configuration:
        store.configure(config, f"{_place.__module__}.{_place.__qualname__}")
    return store


def order_id_for(customer_id: str, idempotency_key: str, body: dict[str, Any]) -> str:
    """The same caller, key and body always name the same order."""
    material = json.dumps({"customer": customer_id, "key": idempotency_key, "body": body}, sort_keys=True)
    return str(uuid.uuid5(_ORDER_ID_NAMESPACE, material))


# An Express saga settles in about a second, a Standard one in a few: by then a slot is likely free.
IN_PROGRESS_RETRY_AFTER_SECONDS = 2


def _check_orders_in_progress(customer_id: str, order_id: str) -> None:
    """Refuse a customer's new order while they have the most orders in progress allowed.

    The count reads an index (eventually consistent), so requests arriving in the same instant
    may each see room; the stage's throttling bounds how many that can be. The order being
    placed is not counted: a retry of a request whose order was stored is never refused.
    """
    limit = api_settings().max_orders_in_progress
    open_orders = set(repository.open_order_ids(customer_id)) - {order_id}
    if len(open_orders) >= limit:
        raise TooManyOrdersInProgress(
            f"customer {customer_id} has {len(open_orders)} orders in progress, the most allowed is {limit}; "
            "retry once one has settled",
            retry_after_seconds=IN_PROGRESS_RETRY_AFTER_SECONDS,
            orders_in_progress=len(open_orders),
            limit=limit,
        )


def _place(submission: OrderSubmission) -> OrderView:
    body = submission.body.model_dump(mode="json")
    order_id = order_id_for(submission.customer_id, submission.idempotency_key, body)
    if not feature_switches().accepting_orders:
        # Inside the idempotent function: a replay whose answer is stored never gets here, and one
        # whose record expired answers its order. Only a new order is refused.
        existing = repository.get(order_id)
        if existing is not None:
            return existing.view(payment=None)
        raise OrdersPaused(
            "the shop is not accepting new orders right now; orders already placed are unaffected",
            retry_after_seconds=max(runtime_config_settings().max_age_seconds, 1),
        )
    if submission.body.items is None:
        # A replay whose idempotency record expired answers its order: the cart may be emptied, or
        # hold other lines, by now.
        existing = repository.get(order_id)
        if existing is not None:
            return existing.view(payment=None)
    try:
        order = _new_order(submission, order_id)
    except ShopError:
        # A replay of an order already placed (its idempotency record expired, or a request that
        # failed after storing it) answers it as placed, like any replay: only a new order is refused
        # (429 for the orders in progress, 422 for a product deactivated or a limit set since). The
        # read is made only on a refusal, so a new order costs none.
        existing = repository.get(order_id)
        if existing is None:
            raise
        return existing.view(payment=None)
    stored = repository.create(order)
    try:
        start_checkout(stored)
    except SagaNotStarted:
        # The order is stored, so it is accepted: the orphan sweeper starts its saga (same
        # execution name, so never twice) within the bound the README states.
        logger().warning(
            "checkout saga not started; the orphan sweeper will start it", extra={"order_id": stored.order_id}
        )
        metrics().add_metric(name="SagaStartsDeferred", unit=MetricUnit.Count, value=1)
    return stored.view(payment=None)


def _new_order(submission: OrderSubmission, order_id: str) -> Order:
    """The order to store, priced now; refused (a ShopError) when the customer may not place it."""
    _check_orders_in_progress(submission.customer_id, order_id)
    cart_id: str | None = None
    cart_version: int | None = None
    items: Sequence[Line]
    if submission.body.items is not None:
        items = submission.body.items
    else:
        # The cart's lines as they are now (CartEmpty, 422, without any); the order keeps the cart's
        # id and the version read, so that its completion removes these lines, and only these, from it.
        cart_id, cart_version, items = carts.lines_for_checkout(submission.customer_id)
    priced = _priced_order(order_id, submission.customer_id, items)
    return priced.model_copy(
        update={
            "payment_token": submission.body.payment.token,
            "idempotency_key": submission.idempotency_key,
            "cart_id": cart_id,
            "cart_version": cart_version,
        }
    )


def start_checkout(order: Order, *, epoch: int = FIRST_EPOCH, name: str | None = None) -> bool:
    """Start the order's checkout saga (name = order id: a repeated start runs nothing).

    ``epoch`` and ``name``: a run that takes the order over from one that stopped (the orphan
    sweeper's continuation of an Express saga); every step is idempotent, so it redoes nothing done.
    """
    if order.payment_token is None:
        raise OrderStateConflict(f"order {order.order_id} has no payment method to check out with")
    checkout = CheckoutInput(
        order_id=order.order_id,
        customer_id=order.customer_id,
        lines=[
            CheckoutLine(
                sku=line.sku,
                quantity=line.quantity,
                purchase_limit=(order.purchase_limits or {}).get(line.sku),
                stock_shards=order.stock_shards.get(line.sku, 1),
            )
            for line in order.items
        ],
        total=order.total,
        payment_token=order.payment_token,
        epoch=epoch,
    )
    return sagas.start(
        sagas.checkout_state_machine_arn(),
        name=name or sagas.checkout_execution_name(order.order_id),
        payload=checkout,
    )


def _priced_order(order_id: str, customer_id: str, items: Sequence[Line]) -> Order:
    """The order with each line priced from the catalog now (never from the client), and each SKU's
    stock shard count for the reservation (no stock is read here)."""
    products = catalog.get_products_for_sale([item.sku for item in items])
    problems = [
        {"field": f"items.{index}.sku", "message": f"{item.sku} does not exist or is not for sale"}
        for index, item in enumerate(items)
        if item.sku not in products or not products[item.sku].active
    ]
    if problems:
        unavailable = [item.sku for item in items if item.sku not in products or not products[item.sku].active]
        raise ProductUnavailable(f"not available: {', '.join(unavailable)}", errors=problems)
    # Refuses a total too large for Money (422) before any Money is built below.
    totals.checked_total(
        [totals.PricedQuantity(products[item.sku].price.amount, item.quantity) for item in items],
        line_message=lambda line: f"{line.quantity} x {line.unit_price} exceeds the maximum line total, {MAX_AMOUNT}",
        total_message=f"the order total exceeds the maximum, {MAX_AMOUNT}",
        detail=f"the order total may be at most {MAX_AMOUNT} (minor units)",
    )
    # Snapshotted into the order: the reserve step enforces them without reading the products again.
    limits = {item.sku: limit for item in items if (limit := products[item.sku].purchase_limit) is not None}
    if not inventory.fits_one_transaction(len(items), len(limits)):
        most = (
            inventory.MAX_TRANSACTION_ACTIONS
            - inventory.RELEASE_CONDITION_ACTIONS
            - inventory.transaction_actions(len(items), 0)
        )
        raise TooManyLimitedLines(
            f"{len(limits)} of these {len(items)} lines have a purchase limit; an order of {len(items)} lines may "
            f"have at most {most}: place the rest in another order",
            errors=[{"field": "items", "message": f"at most {most} lines with a purchase limit in this order"}],
        )
    if limits:
        purchase_limits.check_within_limits(customer_id, items, limits)
    lines = []
    total = Money.zero()
    for item in items:
        product = products[item.sku]
        line_total = product.price.times(item.quantity)
        total = total + line_total
        lines.append(
            OrderLine(
                sku=product.sku,
                name=product.name,
                quantity=item.quantity,
                unit_price=product.price,
                line_total=line_total,
            )
        )
    now = iso_now()
    return Order(
        order_id=order_id,
        customer_id=customer_id,
        status="PENDING",
        items=lines,
        total=total,
        history=[HistoryEntry(step=Step.ORDER_PLACED, status="PENDING", at=now)],
        purchase_limits=limits or None,
        stock_shards={sku: product.stock_shards for sku, product in products.items() if product.stock_shards != 1},
        created_at=now,
        updated_at=now,
    )


# ---------------------------------------------------------------------------- read
def _owned(order_id: str, principal: Principal) -> Order:
    """The order if the caller may see it; anyone else gets exactly what a missing order gives."""
    order = repository.get(order_id)
    if order is None or (order.customer_id != principal.subject and not principal.is_admin):
        raise OrderNotFound(f"no order {order_id}")
    return order


def _payment(order_id: str) -> PaymentView | None:
    summary = payments.payment_summary(order_id)
    if summary is None:
        return None
    return PaymentView(
        status=summary.status, authorized=summary.authorized, captured=summary.captured, refunded=summary.refunded
    )


def get_order(order_id: str, principal: Principal) -> OrderView:
    order = _owned(order_id, principal)
    return order.view(_payment(order.order_id))


# How often a waiting request re-reads its order: soon at first (a saga on AWS Express takes well
# under a second), then less often, so a long wait costs about twenty strongly consistent reads.
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 0.5


def place_order_and_wait(
    principal: Principal,
    idempotency_key: str,
    request: PlaceOrderRequest,
    *,
    wait_seconds: int | None,
    lambda_context: Any = None,
) -> tuple[OrderView, bool]:
    """``POST /orders``: place the order (``place_order``), then with ``wait_seconds`` (``Prefer: wait=N``)
    wait that long at most for its saga to settle it. The order, and whether it is terminal.

    A replay of the key answers the order's current state, like a first request that waited.
    """
    order = place_order(principal, idempotency_key, request, lambda_context=lambda_context)
    if wait_seconds is None:
        return order, False
    return await_outcome(order.order_id, principal, wait_seconds)


def await_outcome(
    order_id: str,
    principal: Principal,
    wait_seconds: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], None] = time.sleep,
) -> tuple[OrderView, bool]:
    """The order as it stands once it is terminal or ``wait_seconds`` have passed, and whether it is terminal.

    ``Prefer: wait=N`` on ``POST /orders``: the saga runs on its own; this only reads the order
    until the saga has settled it, so a request that gives up changes nothing.
    """
    deadline = clock() + wait_seconds
    interval = FIRST_POLL_SECONDS
    while True:
        order = get_order(order_id, principal)
        remaining = deadline - clock()
        if order.status in TERMINAL or remaining <= 0:
            return order, order.status in TERMINAL
        pause(min(interval, remaining))
        interval = min(interval * 2, MAX_POLL_SECONDS)


# A page of orders is at most this many whatever ``limit`` asks: the largest order (50 lines of
# 200-character names, each non-ASCII character escaped twice on its way through Lambda's JSON) is
# about 150 KB of Lambda's response, whose limit is 6 MB (tests/unit/test_order_page_size.py).
MAX_ORDERS_PER_PAGE = 25


def list_orders(principal: Principal, *, limit: int, next_token: str | None) -> OrderPage:
    """The caller's own orders, newest first, at most ``MAX_ORDERS_PER_PAGE`` a page."""
    binding: dict[str, str | int | None] = {"customer": principal.subject}
    start = decode_token(ORDERS_LISTING, next_token, binding)
    found, last_key = repository.list_for_customer(
        principal.subject, limit=min(limit, MAX_ORDERS_PER_PAGE), start_key=start
    )
    return OrderPage(
        items=[order.view(_payment(order.order_id)) for order in found],
        next_token=encode_token(ORDERS_LISTING, last_key, binding),
    )


def list_all_orders(found: OrderFilter, *, limit: int, next_token: str | None) -> OrderPage:
    """Every customer's orders narrowed by ``found`` (the operators' view); a token is bound to the filter."""
    binding: dict[str, str | int | None] = found.model_dump()
    start = decode_token(ALL_ORDERS_LISTING, next_token, binding)
    if found.selects_no_time:
        return OrderPage(items=[], next_token=None)
    orders, last_key = repository.list_filtered(found, limit=min(limit, MAX_ORDERS_PER_PAGE), start_key=start)
    return OrderPage(
        items=[order.view(_payment(order.order_id)) for order in orders],
        next_token=encode_token(ALL_ORDERS_LISTING, last_key, binding),
    )


# ---------------------------------------------------------------------------- cancel
def request_cancellation(order_id: str, principal: Principal) -> OrderView:
    """Pending: flag it, the saga compensates at its next checkpoint. Completed: start the refund saga.

    Asking again changes nothing. The decision and the saga's own writes serialize on the order's
    version, so a cancel racing the completion either stops it or is turned into a refund.
    """
    _owned(order_id, principal)
    now = iso_now()
    decisions: list[lifecycle.CancelDecision] = []

    def decide(current: Order) -> Order | None:
        decision = lifecycle.decide_cancel(current, now)
        decisions.append(decision)
        return decision.order

    order, _ = repository.update(order_id, decide)
    if decisions[-1].start_refund:
        try:
            order_saga.start_refund_saga(order)
        except SagaNotStarted:
            # REFUNDING is stored: the orphan sweeper starts the refund saga within its bound.
            logger().warning("refund saga not started; the orphan sweeper will start it", extra={"order_id": order_id})
            metrics().add_metric(name="SagaStartsDeferred", unit=MetricUnit.Count, value=1)
    return order.view(_payment(order_id))
