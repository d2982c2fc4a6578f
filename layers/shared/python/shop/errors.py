"""Every error a client or a state machine can see.

The HTTP layer maps these to `application/problem+json` by type (``status``, ``title``,
``slug``), in one place (``chalicelib/http.py``). Saga steps raise them too: the class name is
the error name that the state machines' Retry and Catch match, so renaming one is a breaking
change to ``statemachines/`` (tests/unit/test_saga_terms.py checks every name they use).
"""

from __future__ import annotations

from typing import Any, ClassVar


class ShopError(Exception):
    """Base of every expected failure. ``detail`` is safe to show to the caller.

    ``internal``, when given, is what the operators see instead (the message: the logs, a saga step's
    error cause): which service failed and how, which a caller has no use for.
    """

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    slug: ClassVar[str] = "internal-error"

    def __init__(self, detail: str = "", *, internal: str = "", **extensions: Any) -> None:
        super().__init__(internal or detail or self.title)
        self.detail = detail or self.title
        self.extensions = extensions


# ---------------------------------------------------------------------------- 4xx (client)
class BadRequest(ShopError):
    status, title, slug = 400, "Bad request", "bad-request"


class FieldError(ShopError):
    """Request validation failed; ``errors`` lists ``{"field", "message"}`` per problem."""

    status, title, slug = 400, "Invalid request", "validation-error"

    def __init__(self, detail: str, errors: list[dict[str, str]]) -> None:
        super().__init__(detail, errors=errors)
        self.errors = errors


class Unauthorized(ShopError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(ShopError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(ShopError):
    status, title, slug = 404, "Not found", "not-found"


class MethodNotAllowed(ShopError):
    status, title, slug = 405, "Method not allowed", "method-not-allowed"


class Conflict(ShopError):
    status, title, slug = 409, "Conflict", "conflict"


class PayloadTooLarge(ShopError):
    status, title, slug = 413, "Payload too large", "payload-too-large"


class UnsupportedMediaType(ShopError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class Unprocessable(ShopError):
    status, title, slug = 422, "Unprocessable request", "unprocessable"


# ---------------------------------------------------------------------------- catalog
class ProductNotFound(NotFound):
    title, slug = "Product not found", "product-not-found"


class ProductAlreadyExists(Conflict):
    title, slug = "Product already exists", "product-exists"


class StockWouldGoNegative(Conflict):
    title, slug = "Stock would go below zero", "insufficient-stock"


class ProductUnavailable(Unprocessable):
    """An order names a SKU that does not exist or is not active."""

    title, slug = "Product unavailable", "product-unavailable"


class StockWouldExceedMaximum(Conflict):
    """A stock adjustment would take ``available`` above ``shop.models.catalog.MAX_STOCK``; nothing changes."""

    title, slug = "Stock would exceed the maximum", "stock-limit-exceeded"


class OrderTotalTooLarge(Unprocessable):
    """A line total or the order total would exceed ``shop.models.money.MAX_AMOUNT``; ``errors`` names the fields."""

    title, slug = "Order total too large", "order-total-too-large"


class SearchTooBroad(Unprocessable):
    """A product search with more different words than one search reads (``errors`` names ``q``)."""

    title, slug = "Search has too many words", "search-too-many-words"


class SearchMatchesTooMany(Unprocessable):
    """A product search whose words begin more indexed terms than one search reads (``errors`` names
    ``q``): a word of a letter or two in a large catalog. Longer words narrow it."""

    title, slug = "Search matches too many terms", "search-matches-too-many"


# ---------------------------------------------------------------------------- inventory
class OutOfStock(Conflict):
    """Business error: a reservation could not be made; no stock changed.

    ``short_skus`` names every SKU that lacked stock.
    """

    title, slug = "Out of stock", "out-of-stock"

    def __init__(self, short_skus: list[str]) -> None:
        super().__init__(f"not enough stock for: {', '.join(short_skus)}", short_skus=short_skus)
        self.short_skus = short_skus


class PurchaseLimitExceeded(Unprocessable):
    """Business error: the customer would hold more units of a SKU than its purchase limit allows.

    The API answers it (422) when the request alone, or with the units the customer already
    holds, exceeds a limit; the reserve step raises it when a race between two of the customer's
    orders made the later one exceed it (the checkout saga cancels that order). Nothing changed.
    ``skus`` names every SKU over its limit; ``errors`` (API) names the lines.
    """

    title, slug = "Purchase limit exceeded", "purchase-limit-exceeded"

    def __init__(self, skus: list[str], errors: list[dict[str, str]] | None = None) -> None:
        extensions: dict[str, Any] = {"skus": skus}
        if errors is not None:
            extensions["errors"] = errors
        super().__init__(f"over the purchase limit per customer: {', '.join(skus)}", **extensions)
        self.skus = skus


class ReservationConflict(Conflict):
    """The same reservation id was used for different lines, or is in a state that forbids the call."""

    title, slug = "Reservation conflict", "reservation-conflict"


class StockTransactionRefused(ShopError):
    """DynamoDB cancelled a reservation's or a release's transaction for a reason no write of the
    shop expects (the codes are in the detail): a defect, or an item changed behind the shop's
    back. Retrying cannot help; the saga's catch-all compensates and an operator looks."""

    title, slug = "Stock transaction refused", "stock-transaction-refused"


class StoredItemUnusable(ShopError):
    """A stored item a write cannot apply to: an attribute of a type the shop never writes (an item
    written behind its back). Retrying cannot help; it is left for an operator, as the reconciliation
    reports such items."""

    title, slug = "Stored item unusable", "stored-item-unusable"


class ReservationNotFound(NotFound):
    title, slug = "Reservation not found", "reservation-not-found"


class ReservationExpired(Conflict):
    """The reservation was released (expired or compensated) before it could be committed."""

    title, slug = "Reservation expired", "reservation-expired"


# ---------------------------------------------------------------------------- carts
class TooManyLimitedLines(Unprocessable):
    """An order whose lines and purchase-limited lines together exceed one reservation transaction.

    The reservation and its release are each one TransactWriteItems of at most 100 actions: the
    reservation, a take (a return) per line, a purchase count per limited line and, in the saga's
    release, the condition on its claim of the order; so lines + limited lines may be at most 98
    (50 lines may have 48 limited ones). ``errors`` names ``items``; nothing was stored.
    """

    title, slug = "Too many purchase-limited lines", "too-many-limited-lines"


class CartFull(Unprocessable):
    """A new line would take the cart past ``shop.models.carts.MAX_CART_LINES``; nothing changed."""

    title, slug = "Cart full", "cart-full"


class CartEmpty(Unprocessable):
    """``POST /orders`` with ``"cart": true`` found no lines in the customer's cart; nothing was placed."""

    title, slug = "Cart empty", "cart-empty"


# ---------------------------------------------------------------------------- transient
class TransientError(ShopError):
    """Worth retrying with backoff: throttling, a provider 5xx, a lost race."""

    status, title, slug = 503, "Temporarily unavailable", "temporarily-unavailable"


class InventoryContention(TransientError):
    """Concurrent writers hit the same stock or reservation items (TransactionConflict, throttling)."""

    title, slug = "Inventory busy", "inventory-contention"


# ---------------------------------------------------------------------------- payments
# Saga steps raise these; the class names are the error names the state machines match.
class PaymentDeclined(ShopError):
    """Business error: the provider refused the payment. Retrying cannot change the answer."""

    status, title, slug = 402, "Payment declined", "payment-declined"

    def __init__(self, detail: str = "", decline_code: str = "card_declined") -> None:
        super().__init__(detail, decline_code=decline_code)
        self.decline_code = decline_code


class PaymentProviderError(TransientError):
    """The provider failed transiently (timeout, 5xx): worth retrying with backoff."""

    title, slug = "Payment provider unavailable", "payment-provider-error"


class PaymentRecordsContention(TransientError):
    """Our own payment records were busy: the payments ledger's or the payment breaker's table throttled,
    a request got no answer, or concurrent refunds raced on the ledger. Worth retrying with backoff; not
    the provider's failure, and never named so."""

    title, slug = "Payments busy", "payment-records-contention"


class CircuitOpen(ShopError):
    """The provider's circuit breaker is open: the call failed fast without reaching the provider."""

    status, title, slug = 503, "Payment provider circuit open", "circuit-open"


class CaptureExceedsAuthorization(Conflict):
    title, slug = "Capture exceeds authorization", "capture-exceeds-authorization"


class RefundExceedsCapture(Conflict):
    title, slug = "Refund exceeds capture", "refund-exceeds-capture"


class PaymentAlreadyCaptured(Conflict):
    """Business error of the void step: the provider captured this payment, so it cannot be voided.

    The checkout saga catches it and hands the order to the refund saga (refund, return stock).
    """

    title, slug = "Payment already captured", "payment-already-captured"


class PaymentStateConflict(Conflict):
    """The payment is in a state that forbids the call (e.g. refunding an order that has no payment;
    voiding a captured one is PaymentAlreadyCaptured)."""

    title, slug = "Payment state conflict", "payment-state-conflict"


# ---------------------------------------------------------------------------- orders
class OrderNotFound(NotFound):
    """Also what a customer gets for another customer's order: existence is not revealed."""

    title, slug = "Order not found", "order-not-found"


class OrderStateConflict(Conflict):
    """A saga step found the order in a state it cannot move on from (never retried)."""

    title, slug = "Order state conflict", "order-state-conflict"


class CheckoutCancelled(ShopError):
    """Business error at a saga checkpoint: the customer asked to cancel, so the saga compensates."""

    status, title, slug = 409, "Checkout cancelled", "checkout-cancelled"


class CheckoutCancelledAfterPayment(CheckoutCancelled):
    """The checkpoint before the payment, in a run that took the order over from one that stopped (an
    Express saga the orphan sweeper continued): the customer asked to cancel and the stopped run had
    begun the payment, so the compensation voids it (or refunds a capture) as well as the stock."""


class SagaClaimLost(ShopError):
    """Another execution owns this order's saga (the claim's fencing token): this one stops at once,
    without any effect and without compensating, which could undo the owner's work. Express
    workflows start at least once, so a duplicate execution ends here; so does an execution an
    operator's redrive or the refund saga took the order over from."""

    status, title, slug = 409, "Saga claimed by another execution", "saga-claim-lost"


class OrderContention(TransientError):
    """Concurrent writers (the saga and a cancel request) kept changing the order under us."""

    title, slug = "Order busy", "order-contention"


class CartContention(TransientError):
    """Writers kept changing the same cart (many tabs at once) or DynamoDB was busy; retry."""

    title, slug = "Cart busy", "cart-contention"


class SagaNotStarted(TransientError):
    """Step Functions did not start (or describe) a saga execution: throttled, a service error."""

    title, slug = "Saga not started", "saga-not-started"


class RetryLater(ShopError):
    """A refusal that the same request may get past later: the answer says when (``Retry-After``)."""

    def __init__(self, detail: str, *, retry_after_seconds: int, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        self.retry_after_seconds = retry_after_seconds


class OrdersPaused(RetryLater):
    """The shop is not accepting new orders (the ``accepting-orders`` runtime switch is off).

    Not a TransientError: no saga retries it. ``retry_after_seconds`` is at least the settings'
    cache interval, within which the switch turned back on takes effect.
    """

    status, title, slug = 503, "Not accepting orders", "orders-paused"


class TooManyOrdersInProgress(RetryLater):
    """The customer already has the most orders in progress the shop allows (a bot holding stock
    through many open checkouts); nothing was stored. One settles within seconds."""

    status, title, slug = 429, "Too many orders in progress", "too-many-orders-in-progress"


class IdempotencyKeyInUse(Conflict):
    """The first request with this Idempotency-Key is still being processed."""

    title, slug = "Request in progress", "idempotency-key-in-use"


class IdempotencyKeyReused(Unprocessable):
    """The Idempotency-Key was already used with a different body."""

    title, slug = "Idempotency key reused", "idempotency-key-reused"


class DeadLetterNotFound(NotFound):
    title, slug = "Dead letter not found", "dead-letter-not-found"


class UnreadableRecordNotFound(NotFound):
    title, slug = "Unreadable record not found", "unreadable-record-not-found"


class UnreadableRecordPublished(Conflict):
    """A dismissal asked for a record the republisher has published: there is nothing to dismiss."""

    title, slug = "The record was published", "unreadable-record-published"


class SagaStillRunning(Conflict):
    """A redrive asked for an order whose saga is in progress (a refund the customer asked for after the
    letter was written, say): that saga settles the order and resolves the letter, and a redrive would
    take the order over from it. If it stopped instead, the orphan sweeper resumes it."""

    title, slug = "The order's saga is still running", "saga-still-running"


class ReconciliationReportNotFound(NotFound):
    title, slug = "No reconciliation report yet", "reconciliation-report-not-found"


# ---------------------------------------------------------------------------- events
class EventPublishFailed(TransientError):
    """EventBridge refused an entry of PutEvents (throttled or failed): the stream record is retried."""

    title, slug = "Event not published", "event-publish-failed"


class RecordUnreadable(ShopError):
    """A stream record its publisher cannot act on because an item it leads to cannot be read (a
    product item written behind the shop's back): every retry would fail the same way, so the record
    is set aside like one that cannot be read itself (``shop.domain.events``). Raised before any effect."""

    title, slug = "Stream record unreadable", "stream-record-unreadable"
