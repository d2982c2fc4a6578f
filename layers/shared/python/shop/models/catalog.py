"""Catalog boundaries: the admin requests, the listing query and the Product clients see."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator, model_validator

from shop.models.base import Record, StrictModel
from shop.models.money import Money
from shop.pagination import NextToken, PageLimit

SKU_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Sku = Annotated[str, Field(pattern=SKU_PATTERN, description="1-64 characters of A-Z a-z 0-9 - _")]

# Stock numbers stay far below what DynamoDB and JSON clients represent exactly.
MAX_STOCK = 10**9

# Unicode categories never accepted in text: controls, and lone surrogates (not encodable as
# UTF-8, so DynamoDB would refuse them).
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs"})
_MULTILINE_CONTROLS = frozenset("\n\t")


def _forbidden(text: str, allowed: frozenset[str] = frozenset()) -> bool:
    return any(ch not in allowed and unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in text)


def _single_line(value: str) -> str:
    if _forbidden(value):
        raise ValueError("must not contain control characters")
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    return value


def _multi_line(value: str) -> str:
    if _forbidden(value, _MULTILINE_CONTROLS):
        raise ValueError("must not contain control characters other than newline and tab")
    return value


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_single_line)]
Description = Annotated[str, Field(max_length=2000), AfterValidator(_multi_line)]
# The category is the partition key of the ActiveProductsByCategory index.
Category = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_single_line)]
Reason = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_single_line)]


class CreateProductRequest(StrictModel):
    """``POST /products``: ``stock`` becomes the product's ``available``."""

    sku: Sku
    name: Name
    description: Description = ""
    category: Category
    price: Money
    stock: int = Field(ge=0, le=MAX_STOCK, description=f"Becomes `available`; 0 to {MAX_STOCK}.")


class UpdateProductRequest(StrictModel):
    """``PATCH /products/{sku}``: any of the fields; at least one; none may be null."""

    name: Name | None = None
    description: Description | None = None
    category: Category | None = None
    price: Money | None = None
    active: bool | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # An explicit null would mean "clear", which no field supports; absent means "keep".
        if value is None:
            raise ValueError("must not be null (leave the field out to keep its value)")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> UpdateProductRequest:
        if not self.model_fields_set:
            raise ValueError(f"send at least one of: {', '.join(type(self).model_fields)}")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the client sent, as Python values (``price`` stays a Money)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class StockAdjustmentRequest(StrictModel):
    """``POST /products/{sku}/stock-adjustments``: a signed, non-zero change with a reason."""

    delta: int = Field(
        ge=-MAX_STOCK,
        le=MAX_STOCK,
        description=f"Non-zero. The resulting `available` must stay within 0 to {MAX_STOCK} (else 409).",
    )
    reason: Reason

    @field_validator("delta")
    @classmethod
    def _non_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be zero")
        return value


class ProductListQuery(StrictModel):
    """``GET /products`` query string."""

    category: Category | None = None
    limit: PageLimit = 20
    next_token: NextToken | None = None


class Product(Record):
    """A product as clients see it (the contract's fields plus timestamps)."""

    sku: str
    name: str
    description: str
    category: str
    price: Money
    available: int
    active: bool
    created_at: str
    updated_at: str


class ProductPage(Record):
    items: list[Product]
    next_token: str | None


class StockLedgerEntry(Record):
    """One audited stock adjustment in StockLedgerTable (``entry_id`` sorts by time)."""

    sku: str
    entry_id: str
    actor: str
    at: str
    delta: int
    reason: str
    available: int
