"""Every error a client or a state machine can see.

The HTTP layer maps these to `application/problem+json` by type (``status``, ``title``,
``slug``), in one place (``shop.http.problems``). Saga steps raise them too: the class name is
the error name that the state machines' Retry and Catch match, so renaming one is a breaking
change to ``statemachines/``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ShopError(Exception):
    """Base of every expected failure. ``detail`` is safe to show to the caller."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    slug: ClassVar[str] = "internal-error"

    def __init__(self, detail: str = "", **extensions: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extensions = extensions


# ---------------------------------------------------------------------------- 4xx (client)
class BadRequest(ShopError):
    status, title, slug = 400, "Bad request", "bad-request"


class FieldError(ShopError):
    """Request validation failed; ``errors`` lists ``{"field", "message"}`` per problem."""

    status, title, slug = 400, "Invalid request", "validation-error"

    def __init__(self, detail: str, errors: list[dict[str, str]], status: int = 400) -> None:
        super().__init__(detail, errors=errors)
        self.errors = errors
        self.status_code = status


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


# ---------------------------------------------------------------------------- inventory
class OutOfStock(Conflict):
    """Business error: a reservation could not be made; no stock changed.

    ``short_skus`` names every SKU that lacked stock.
    """

    title, slug = "Out of stock", "out-of-stock"

    def __init__(self, short_skus: list[str]) -> None:
        super().__init__(f"not enough stock for: {', '.join(short_skus)}", short_skus=short_skus)
        self.short_skus = short_skus


class ReservationConflict(Conflict):
    """The same reservation id was used for different lines, or is in a state that forbids the call."""

    title, slug = "Reservation conflict", "reservation-conflict"


class ReservationNotFound(NotFound):
    title, slug = "Reservation not found", "reservation-not-found"


# ---------------------------------------------------------------------------- transient
class TransientError(ShopError):
    """Worth retrying with backoff: throttling, a provider 5xx, a lost race."""

    status, title, slug = 503, "Temporarily unavailable", "temporarily-unavailable"
