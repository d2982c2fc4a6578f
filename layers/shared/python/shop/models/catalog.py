"""Catalog boundaries: the admin requests, the listing query and the Product clients see."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from shop.models.base import Record, StrictModel
from shop.models.common import DEFAULT_PAGE_LIMIT, NextToken, PageLimit, PurchaseLimit, Sku, StockShards
from shop.models.money import Money

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


# The validators above as JSON Schema patterns, for the OpenAPI document (the validators enforce
# them; tests/unit/test_catalog_models.py checks that both agree on every code point). Forbidden
# anywhere: the controls (Cc); at either end also whitespace (what str.strip() removes). Lone
# surrogates cannot be stated portably; the body parser refuses them anywhere.
_CONTROLS = r"\x00-\x1f\x7f-\x9f"
_CONTROLS_BUT_NEWLINE_AND_TAB = r"\x00-\x08\x0b-\x1f\x7f-\x9f"
_CONTROLS_AND_SPACES = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
SINGLE_LINE_PATTERN = f"^[^{_CONTROLS_AND_SPACES}](?:[^{_CONTROLS}]*[^{_CONTROLS_AND_SPACES}])?$"
MULTI_LINE_PATTERN = f"^[^{_CONTROLS_BUT_NEWLINE_AND_TAB}]*$"


def _text(min_length: int | None, max_length: int, pattern: str) -> Any:
    # The pattern is documented only: the validator enforces it with a message that says why.
    return Field(min_length=min_length, max_length=max_length, json_schema_extra={"pattern": pattern})


Name = Annotated[str, _text(1, 200, SINGLE_LINE_PATTERN), AfterValidator(_single_line)]
Description = Annotated[str, _text(None, 2000, MULTI_LINE_PATTERN), AfterValidator(_multi_line)]
# The category is the partition key of the ActiveProductsByCategory index.
Category = Annotated[str, _text(1, 64, SINGLE_LINE_PATTERN), AfterValidator(_single_line)]
Reason = Annotated[str, _text(1, 500, SINGLE_LINE_PATTERN), AfterValidator(_single_line)]


class CreateProductRequest(StrictModel):
    """``POST /products``: ``stock`` becomes the product's ``available``."""

    sku: Sku
    name: Name
    description: Description = ""
    category: Category
    price: Money
    stock: int = Field(ge=0, le=MAX_STOCK, description=f"Becomes `available`; 0 to {MAX_STOCK}.")


# The fields of ``UpdateProductRequest`` whose null means "clear" rather than being refused.
_CLEARABLE = frozenset({"purchase_limit"})


def _present_fields_only(schema: dict[str, Any]) -> None:
    """``UpdateProductRequest``'s schema as the server enforces it: null only where it clears; at least one field."""
    for name, prop in schema.get("properties", {}).items():
        prop.pop("default", None)
        if name in _CLEARABLE:
            continue
        variants = [variant for variant in prop.pop("anyOf", []) if variant != {"type": "null"}]
        if len(variants) == 1:
            prop.update(variants[0])
    schema["minProperties"] = 1


class UpdateProductRequest(StrictModel):
    """``PATCH /products/{sku}``: any of the fields; at least one; only ``purchase_limit`` may be null (clears it)."""

    model_config = ConfigDict(json_schema_extra=_present_fields_only)

    name: Name | None = None
    description: Description | None = None
    category: Category | None = None
    price: Money | None = None
    active: bool | None = None
    purchase_limit: PurchaseLimit | None = Field(
        default=None, description="Units of this SKU one customer may hold across orders not CANCELLED; null: no limit."
    )
    stock_shards: StockShards | None = Field(
        default=None,
        description="How many independently written counters hold the SKU's stock (1-50); the units move, none are "
        "lost or created.",
    )

    @field_validator("name", "description", "category", "price", "active", "stock_shards", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # An explicit null would mean "clear", which these fields do not support; absent means "keep".
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
        json_schema_extra={"not": {"const": 0}},
    )
    reason: Reason

    @field_validator("delta")
    @classmethod
    def _non_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be zero")
        return value


# The contract's bound on a search's text, in characters; and the most different words one search
# reads (each word is one Query of the search index, shop.domain.search).
MAX_SEARCH_LENGTH = 100
MAX_QUERY_WORDS = 8
SearchText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_SEARCH_LENGTH,
        description=(
            f"Search text, 1-{MAX_SEARCH_LENGTH} characters: products whose name, description or category have a "
            "term beginning with each of its words (letters and digits; case and accents do not matter), best "
            f"matches first. At most {MAX_QUERY_WORDS} different words (more: 422 `search-too-many-words`); text "
            "without a letter or digit matches nothing."
        ),
    ),
]


class ProductListQuery(StrictModel):
    """``GET /products`` query string: with ``q`` a search, else the listing by SKU."""

    q: SearchText | None = None
    category: Category | None = None
    limit: PageLimit = DEFAULT_PAGE_LIMIT
    next_token: NextToken | None = None


class ProductInfo(Record):
    """The product item without its stock: what order placement needs (prices, no stock read)."""

    sku: str
    name: str
    description: str
    category: str
    price: Money
    active: bool
    # The most units one customer may hold across orders that are not CANCELLED; None: no limit.
    purchase_limit: int | None = None
    # How many stock counters (shards) hold the SKU's ``available`` (StockTable).
    stock_shards: int = 1
    created_at: str
    updated_at: str


class Product(ProductInfo):
    """A product as clients see it (the contract's fields, the shard count and timestamps).

    ``available`` is the sum of the SKU's stock shards.
    """

    available: int

    @classmethod
    def of(cls, info: ProductInfo, available: int) -> Product:
        return cls(**info.model_dump(), available=available)


class ProductPage(Record):
    items: list[Product]
    next_token: str | None


class StockLevel(Record):
    """A product's stock as operators see it (inactive products too)."""

    sku: str
    name: str
    active: bool
    available: int
    low_stock: bool


class StockLevelPage(Record):
    items: list[StockLevel]
    low_stock_threshold: int
    next_token: str | None


class SearchReindexQuery(StrictModel):
    """``POST /admin/search/reindex`` query string: no token for the first call; each next one passes
    the ``next_token`` the last answered."""

    next_token: NextToken | None = None


class SearchReindexStep(Record):
    """What one call of the search index rebuild did, and the token of the next."""

    stage: Literal["terms", "prune"] = Field(
        description=(
            "`terms`: a page of products, each active one's terms written as the current text rules make them; "
            "`prune`: a page of the index, each term no product has now deleted."
        )
    )
    products_indexed: int = Field(description="Active products whose terms this call wrote.")
    terms_written: int
    terms_deleted: int
    changed_meanwhile: list[str] = Field(
        description=(
            "SKUs left alone because the product's text (name, description, category, active) changed during the call: "
            "its own write kept its terms in step. "
            "A run over the whole index lists the SKUs to check, if any."
        )
    )
    next_token: str | None = Field(description="Pass it to the next call; null once the whole index is rebuilt.")


class StockLedgerEntry(Record):
    """One audited stock adjustment in StockLedgerTable (``entry_id`` sorts by time).

    ``available`` is the total the adjustment was computed from plus ``delta``: sales on other
    shards may move the total at the same moment (the adjustment does not wait for them).
    """

    sku: str
    entry_id: str
    actor: str
    at: str
    delta: int
    reason: str
    available: int
