"""Load on the shop's HTTP API with Locust: a shopper mix and a flash-sale mix.

`make load` runs it headless against a local stack it starts (or a deployed stage, `HOST=<url>`);
README "make load" has the knobs. By hand, with PYTHONPATH as the Makefile sets it:

    LOAD_TOKENS=tokens.json locust -f infra/load/locustfile.py --headless --host URL Shopper FlashSaleShopper

User classes (Locust's class picker: name them on the command line; with none, both run, 3:1):
- ``Shopper``: browses the catalog (list pages, a category, searches, product details), revalidating what it
  has seen with ``If-None-Match`` as a browser reloading a page does; checks out (``Idempotency-Key``,
  half of the time ``Prefer: wait=N``) and follows the order to its outcome; pays with a declined
  card now and then; cancels an order (pending or completed); looks at its orders; fills an
  anonymous cart (``X-Cart-Token``), merges it into its customer's cart as at sign-in and orders
  the cart (``"cart": true``).
- ``FlashSaleShopper``: many users buying one unit each of ONE SKU that has few units. Sold out
  (the saga ends CANCELLED with ``OUT_OF_STOCK``) is an expected outcome. At the end it prints the
  units sold against the stock and fails the run if more were sold, or if the stock left does not
  account for the units sold.

The tasks are tagged ``browse``, ``checkout``, ``cancel``, ``orders``, ``cart`` and ``flash`` for Locust's
``--tags``/``--exclude-tags``.

Every order's outcome is a row of Locust's table (type ``ORDER``, its time from the POST to the
settled status). A failure is: a 5xx, a status the route should not answer, an outcome the order
should not have (``NEEDS_ATTENTION``, a decline for a good card, ...), an order that does not settle
within ``LOAD_SETTLE_SECONDS``.

Environment (read when Locust starts):
- ``LOAD_TOKENS``: a JSON file ``{"admin": "<token>", "customers": {"<name>": "<token>", ...}}``, the
  shape of `make run`'s ``.local/dev-tokens.json``. The admin token seeds the products the mixes
  buy; each user is one of the customers, in turn.
- ``LOAD_FLASH_SKU`` (default ``FLASH-<time>-<random>``, a new SKU per run) and ``LOAD_FLASH_STOCK``
  (10): the flash sale's SKU, created with that stock.
- ``LOAD_THINK_MIN_SECONDS``, ``LOAD_THINK_MAX_SECONDS`` (1, 3): a shopper's pause between tasks;
  a flash-sale shopper pauses a tenth of it.
- ``LOAD_PREFER_WAIT_SECONDS`` (5), ``LOAD_SETTLE_SECONDS`` (30), ``LOAD_POLL_SECONDS`` (0.5).
- ``LOAD_TOURS`` (0): each user, instead of the random mix, makes this many tours of every route and every
  choice its tasks make (``tour``: a flash buyer looks and buys one unit), and the run ends once every user
  has, or at ``--run-time``. A short run then reaches every outcome whatever the dice say and however slow
  the machine: the HTTP tier's checks run one tour.

Runs as one Locust process (the seeding and the flash tally live in it), not distributed.
"""

from __future__ import annotations

import itertools
import logging
import random
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import gevent
import requests
from locust import HttpUser, events, tag, task
from locust.env import Environment
from locust.exception import StopUser
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shop.models.carts import CART_TOKEN_HEADER, CartView, SetCartItemRequest
from shop.models.catalog import CreateProductRequest, Product, ProductPage, StockAdjustmentRequest
from shop.models.money import Money
from shop.models.orders import TERMINAL, OrderPage, OrderView, PlaceOrderRequest

log = logging.getLogger("shop.load")

# The shopper mix buys from its own products, so a run never empties the demo catalog and never
# sells out (an OUT_OF_STOCK there is a failure). Created if absent, topped up at every start.
SHOPPER_CATEGORY = "load-test"
SHOPPER_SKUS = ("LOAD-TEE", "LOAD-MUG", "LOAD-BOOK", "LOAD-LAMP", "LOAD-SOCKS")
SHOPPER_STOCK = 1_000_000
FLASH_CATEGORY = "flash-sale"
APPROVED_CARD = "tok_visa"
DECLINED_CARD = "tok_chargeDeclined"
ORDER = "ORDER"  # the request type of the outcome rows
SEED_TIMEOUT_SECONDS = 30


class LoadSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOAD_", frozen=True)

    tokens: Path
    flash_sku: str = Field(
        default_factory=lambda: f"FLASH-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(2)}",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
    )
    flash_stock: int = Field(default=10, ge=1, le=1_000_000)
    think_min_seconds: float = Field(default=1.0, ge=0)
    think_max_seconds: float = Field(default=3.0, ge=0)
    prefer_wait_seconds: int = Field(default=5, ge=1, le=10)
    settle_seconds: float = Field(default=30.0, gt=0)
    poll_seconds: float = Field(default=0.5, gt=0)
    tours: int = Field(default=0, ge=0, le=1000)

    @model_validator(mode="after")
    def _think_range(self) -> LoadSettings:
        if self.think_max_seconds < self.think_min_seconds:
            raise ValueError("LOAD_THINK_MAX_SECONDS is below LOAD_THINK_MIN_SECONDS")
        return self


class LoadTokens(BaseModel):
    """The tokens file (the shape of `make run`'s dev-tokens.json)."""

    admin: str = Field(min_length=1)
    customers: dict[str, str] = Field(min_length=1)


@cache
def settings() -> LoadSettings:
    return LoadSettings()  # LOAD_TOKENS comes from the environment


@dataclass
class FlashTally:
    """What the flash-sale shoppers saw, kept in this process (all users are greenlets of it)."""

    sku: str = ""
    stock: int = 0
    orders_placed: int = 0
    orders_completed: int = 0
    orders_sold_out: int = 0
    orders_otherwise: int = 0
    units_sold: int = 0

    @property
    def orders_unsettled(self) -> int:
        """Placed orders whose outcome no shopper saw (a failed read, the run's end)."""
        return self.orders_placed - self.orders_completed - self.orders_sold_out - self.orders_otherwise


@dataclass
class Run:
    """What the preparation (Locust's init) hands the users."""

    customers: Iterator[tuple[str, str]] = field(default_factory=lambda: iter(()))
    flash: FlashTally = field(default_factory=FlashTally)
    # LOAD_TOURS: the users Locust started (known once spawning completes) and those done touring.
    users_started: int | None = None
    users_toured: int = 0
    environment: Environment | None = None


run = Run()


# ---------------------------------------------------------------------------- seeding (the admin API)
def _admin_session(host: str, admin_token: str) -> tuple[requests.Session, str]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {admin_token}"
    return session, host.rstrip("/")


def _create_product(session: requests.Session, api: str, product: CreateProductRequest) -> Product:
    """The product, created; an existing one (409) is read back instead."""
    created = session.post(f"{api}/products", json=product.model_dump(mode="json"), timeout=SEED_TIMEOUT_SECONDS)
    if created.status_code == 201:
        return Product.model_validate_json(created.content)
    if created.status_code != 409:
        raise RuntimeError(f"POST /products {product.sku}: {created.status_code} {created.text[:300]}")
    existing = session.get(f"{api}/products/{product.sku}", timeout=SEED_TIMEOUT_SECONDS)
    if existing.status_code != 200:
        raise RuntimeError(f"GET /products/{product.sku}: {existing.status_code} {existing.text[:300]}")
    return Product.model_validate_json(existing.content)


def _seed_shopper_products(session: requests.Session, api: str) -> None:
    for index, sku in enumerate(SHOPPER_SKUS):
        product = _create_product(
            session,
            api,
            CreateProductRequest(
                sku=sku,
                name=f"Load test {sku.removeprefix('LOAD-').lower()}",
                description="Bought by `make load`'s shoppers.",
                category=SHOPPER_CATEGORY,
                price=Money(amount=900 + 700 * index),
                stock=SHOPPER_STOCK,
            ),
        )
        if product.available < SHOPPER_STOCK:
            adjustment = StockAdjustmentRequest(delta=SHOPPER_STOCK - product.available, reason="make load top-up")
            topped_up = session.post(
                f"{api}/products/{sku}/stock-adjustments",
                json=adjustment.model_dump(mode="json"),
                timeout=SEED_TIMEOUT_SECONDS,
            )
            if topped_up.status_code != 200:
                raise RuntimeError(f"stock adjustment {sku}: {topped_up.status_code} {topped_up.text[:300]}")


def _seed_flash_product(session: requests.Session, api: str, sku: str, stock: int) -> int:
    """The flash-sale SKU, created with ``stock`` units; the units it has (a reused SKU keeps its own)."""
    product = _create_product(
        session,
        api,
        CreateProductRequest(
            sku=sku,
            name=f"Flash sale {sku}",
            description="Few units, many buyers: `make load MIX=flash`.",
            category=FLASH_CATEGORY,
            price=Money(amount=1999),
            stock=stock,
        ),
    )
    return product.available


@events.init.add_listener
def _prepare_run(environment: Environment, **_kwargs: Any) -> None:
    """Seed what the chosen user classes buy and hand out the customers, before any user starts.

    Locust fires ``init`` once, in its main flow: a failure here ends the process (exit status 1)
    before the run begins.
    """
    run.environment = environment
    try:
        config = settings()
        tokens = LoadTokens.model_validate_json(config.tokens.read_bytes())
        if not environment.host:
            raise RuntimeError("no host: pass --host (make load does)")
        session, api = _admin_session(environment.host, tokens.admin)
        chosen = set(environment.user_classes)
        if Shopper in chosen:
            _seed_shopper_products(session, api)
        if FlashSaleShopper in chosen:
            stock = _seed_flash_product(session, api, config.flash_sku, config.flash_stock)
            run.flash = FlashTally(sku=config.flash_sku, stock=stock)
            print(f"flash sale: {config.flash_sku} with {stock} units", flush=True)
        run.customers = itertools.cycle(tokens.customers.items())
    except (OSError, ValidationError, RuntimeError, requests.RequestException) as error:
        log.error("the load test could not start: %s", error)
        sys.exit(1)  # SystemExit passes through Locust's event hook, which logs and swallows Exceptions


# ---------------------------------------------------------------------------- LOAD_TOURS: the run's end
@events.spawning_complete.add_listener
def _count_users(user_count: int, **_kwargs: Any) -> None:
    if settings().tours:
        run.users_started = user_count
        _end_when_every_user_toured()


def _end_when_every_user_toured() -> None:
    """With LOAD_TOURS, the run ends once every user has made its tours, before --run-time."""
    runner = run.environment.runner if run.environment is not None else None
    if runner is not None and run.users_started is not None and run.users_toured >= run.users_started:
        # From a greenlet of its own: quit() kills every user's greenlet, the caller's among them.
        gevent.spawn(runner.quit)


# ---------------------------------------------------------------------------- the flash sale's books
@events.test_stop.add_listener
def _report_flash_sale(environment: Environment, **_kwargs: Any) -> None:
    """Units sold against the stock; more sold than stocked, or stock unaccounted for, fails the run."""
    tally = run.flash
    if not tally.sku or environment.host is None:
        return
    response = requests.get(f"{environment.host.rstrip('/')}/products/{tally.sku}", timeout=SEED_TIMEOUT_SECONDS)
    available = Product.model_validate_json(response.content).available if response.status_code == 200 else None
    print(
        f"flash sale {tally.sku}: {tally.units_sold} of {tally.stock} units sold "
        f"({tally.orders_completed} orders COMPLETED, {tally.orders_sold_out} sold out with OUT_OF_STOCK, "
        f"{tally.orders_unsettled} unsettled); available now: {available}",
        flush=True,
    )
    problems = []
    if tally.units_sold > tally.stock:
        problems.append(f"oversold: {tally.units_sold} units sold of {tally.stock}")
    if available is None:
        problems.append(f"GET /products/{tally.sku} answered {response.status_code}")
    elif tally.orders_unsettled == 0 and tally.stock - available != tally.units_sold:
        problems.append(f"stock {tally.stock} - available {available} is not the {tally.units_sold} units sold")
    for problem in problems:
        environment.events.request.fire(
            request_type=ORDER,
            name="flash sale: units sold vs stock",
            response_time=0,
            response_length=0,
            exception=AssertionError(problem),
            context={},
        )


# ---------------------------------------------------------------------------- users
@dataclass(frozen=True)
class Expected:
    """The outcomes an order may end in, ``(status, failure_reason)``, and the statuses that end the wait."""

    outcomes: frozenset[tuple[str, str | None]]
    settled: frozenset[str] = TERMINAL

    def allows(self, order: OrderView) -> bool:
        return (order.status, order.failure_reason) in self.outcomes

    def __str__(self) -> str:
        return " or ".join(sorted(describe(status, reason) for status, reason in self.outcomes))


def describe(status: str, failure_reason: str | None) -> str:
    return status if failure_reason is None else f"{status} {failure_reason}"


COMPLETES = Expected(frozenset({("COMPLETED", None)}))
IS_DECLINED = Expected(frozenset({("CANCELLED", "PAYMENT_DECLINED")}))
# A cancel racing the checkout either stops it or, once it completed, refunds it: after a cancel
# was accepted, COMPLETED is a step on the way to REFUNDED, not an end.
IS_CANCELLED = Expected(
    frozenset({("CANCELLED", "CANCELLED_BY_CUSTOMER"), ("REFUNDED", None)}), settled=TERMINAL - {"COMPLETED"}
)
# Everyone at once on one SKU: on DynamoDB a reservation can still meet a conflicting transaction after
# its retries (INVENTORY_UNAVAILABLE, not a claim that the units are gone); the emulator has none.
SELLS_OR_SELLS_OUT = Expected(
    frozenset({("COMPLETED", None), ("CANCELLED", "OUT_OF_STOCK"), ("CANCELLED", "INVENTORY_UNAVAILABLE")})
)


class ShopUser(HttpUser):
    """A signed-in customer: the calls and the order-following both mixes share."""

    abstract = True
    think_scale = 1.0

    def wait_time(self) -> float:
        config = settings()
        return self.think_scale * random.uniform(config.think_min_seconds, config.think_max_seconds)

    def on_start(self) -> None:
        # A deployed stage's URL ends in /api/: the routes' paths start with their own slash.
        self.client.base_url = self.client.base_url.rstrip("/")
        self.customer, token = next(run.customers)
        self.auth = {"Authorization": f"Bearer {token}"}
        # What a browser cache keeps: the ETag and body of each URL this user has read.
        self.cached: dict[str, tuple[str, bytes]] = {}
        if settings().tours:
            for _ in range(settings().tours):
                self.tour()
            run.users_toured += 1
            _end_when_every_user_toured()
            raise StopUser()  # instead of the random mix

    def tour(self) -> None:
        """Every route and every choice of this user's tasks, once (LOAD_TOURS)."""
        raise NotImplementedError

    # -------------------------------------------------------------- catalog reads, revalidated
    def read_catalog(self, path: str, name: str) -> bytes | None:
        """GET a catalog URL, with If-None-Match when this user has it cached; the current body."""
        cached = self.cached.get(path)
        headers = {"If-None-Match": cached[0]} if cached else {}
        # Revalidations are rows of their own: mostly 304s without a body, another cost.
        name = f"{name} (If-None-Match)" if cached else name
        with self.client.get(path, headers=headers, name=name, catch_response=True) as response:
            if response.status_code == 304 and cached:
                response.success()
                return cached[1]
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:300]}")
                return None
            etag = response.headers.get("ETag")
            if not etag:
                response.failure("200 without an ETag")
                return None
            self.cached[path] = (etag, response.content)
            response.success()
            return response.content

    # -------------------------------------------------------------- orders
    def place_order(
        self, lines: dict[str, int] | None, card: str, *, prefer_wait: bool
    ) -> tuple[OrderView, float] | None:
        """POST /orders with a fresh Idempotency-Key; the order as answered and when it was sent.

        ``lines`` None orders the customer's cart (``"cart": true``). Several users share a customer,
        so another may have ordered that cart first: its 422 ``cart-empty`` is then not a failure.
        """
        source: dict[str, Any] = (
            {"cart": True}
            if lines is None
            else {"items": [{"sku": sku, "quantity": quantity} for sku, quantity in lines.items()]}
        )
        body = PlaceOrderRequest.model_validate({**source, "payment": {"token": card}})
        headers = {**self.auth, "Idempotency-Key": str(uuid.uuid4())}
        name = "/orders" if lines is not None else "/orders (cart)"
        expected = {202}
        if prefer_wait:
            wait = settings().prefer_wait_seconds
            headers["Prefer"] = f"wait={wait}"
            name = f"{name} (Prefer: wait={wait})"
            expected = {201, 202}
        sent = time.monotonic()
        with self.client.post(
            "/orders", json=body.model_dump(mode="json"), headers=headers, name=name, catch_response=True
        ) as response:
            if lines is None and response.status_code == 422 and "cart-empty" in response.text:
                response.success()  # another user of this customer ordered the cart first
                return None
            if response.status_code not in expected:
                response.failure(f"{response.status_code}: {response.text[:300]}")
                return None
            try:
                order = OrderView.model_validate_json(response.content)
            except ValidationError as error:
                response.failure(f"not an Order: {error}")
                return None
            if response.headers.get("Location") != f"/orders/{order.order_id}":
                response.failure(f"Location {response.headers.get('Location')!r} is not the order's")
                return None
            response.success()
            return order, sent

    def read_order(self, order_id: str) -> OrderView | None:
        with self.client.get(
            f"/orders/{order_id}", headers=self.auth, name="/orders/{order_id}", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:300]}")
                return None
            response.success()
            return OrderView.model_validate_json(response.content)

    def follow(self, order: OrderView, since: float, expected: Expected, label: str) -> OrderView | None:
        """Read the order until it settles; record its outcome as an ORDER row, timed from ``since``.

        The row is a failure when the outcome is not one ``expected`` allows, or when the order has
        not settled within LOAD_SETTLE_SECONDS of ``since``.
        """
        ends = expected.settled
        deadline = since + settings().settle_seconds
        current: OrderView | None = order
        while current is not None and current.status not in ends and time.monotonic() < deadline:
            gevent.sleep(settings().poll_seconds)  # a client's polling interval
            current = self.read_order(order.order_id)
        if current is None:
            return None  # the read's own failure is recorded
        elapsed_ms = (time.monotonic() - since) * 1000
        outcome = describe(current.status, current.failure_reason)
        error: Exception | None = None
        if current.status not in ends:
            outcome = "not settled"
            error = AssertionError(
                f"order {order.order_id} still {current.status} after {settings().settle_seconds:.0f} s"
            )
        elif not expected.allows(current):
            # The history names the step that failed: OUT_OF_STOCK, for one, comes from three of them.
            steps = ", ".join(f"{entry.step} {entry.status}" for entry in current.history)
            error = AssertionError(f"order {order.order_id} ended {outcome}, expected {expected}; history: {steps}")
        self.environment.events.request.fire(
            request_type=ORDER,
            name=f"{label} -> {outcome}",
            response_time=elapsed_ms,
            response_length=0,
            exception=error,
            context={},
        )
        return current


class Shopper(ShopUser):
    """Browses most of the time, sometimes buys, cancels or looks back at its orders."""

    weight = 3

    def on_start(self) -> None:
        self.known_skus: list[str] = list(SHOPPER_SKUS)
        self.categories: list[str] = [SHOPPER_CATEGORY]
        # Words of the product names seen, for searches a shopper would type.
        self.name_words: list[str] = ["mug", "lamp"]
        super().on_start()

    def learn(self, body: bytes | None) -> str | None:
        """Remember the SKUs, categories and name words of a catalog page; its next_token."""
        if body is None:
            return None
        page = ProductPage.model_validate_json(body)
        for product in page.items:
            if product.sku not in self.known_skus:
                self.known_skus.append(product.sku)
            if product.category not in self.categories:
                self.categories.append(product.category)
            for word in product.name.split():
                if word.isalpha() and len(word) > 2 and word.lower() not in self.name_words:
                    self.name_words.append(word.lower())
        return page.next_token

    # ------------------------------------------------------------ what a shopper does, each choice explicit
    def browse_pages(self, *, next_page: bool) -> None:
        next_token = self.learn(self.read_catalog("/products?limit=20", name="/products"))
        if next_token and next_page:
            query = urlencode({"limit": 20, "next_token": next_token})
            self.learn(self.read_catalog(f"/products?{query}", name="/products?next_token"))

    def browse_category(self) -> None:
        category = random.choice(self.categories)
        self.learn(self.read_catalog(f"/products?{urlencode({'category': category})}", name="/products?category"))

    def search_names(self, *, unfinished: bool) -> None:
        """A search as typed: one or two words of names seen, the last one unfinished or whole."""
        words = random.sample(self.name_words, k=min(len(self.name_words), random.randint(1, 2)))
        if unfinished:
            words[-1] = words[-1][: random.randint(2, len(words[-1]))]
        self.learn(self.read_catalog(f"/products?{urlencode({'q': ' '.join(words)})}", name="/products?q"))

    def view_product(self) -> None:
        sku = random.choice(self.known_skus)
        self.read_catalog(f"/products/{sku}", name="/products/{sku}")

    def buy(self, card: str, *, prefer_wait: bool) -> None:
        placed = self.place_order(self.basket(), card, prefer_wait=prefer_wait)
        if placed and card == APPROVED_CARD:
            self.follow(*placed, COMPLETES, "checkout")
        elif placed:
            self.follow(*placed, IS_DECLINED, "declined card")

    def basket(self) -> dict[str, int]:
        skus = random.sample(SHOPPER_SKUS, k=random.randint(1, 3))
        return {sku: random.randint(1, 3) for sku in skus}

    def tour(self) -> None:
        """Every route and every choice of the tasks below, once: what a short run must reach, whatever
        the dice say."""
        self.browse_pages(next_page=True)
        self.browse_category()
        self.search_names(unfinished=False)
        self.search_names(unfinished=True)
        self.view_product()
        for prefer_wait in (True, False):
            self.buy(APPROVED_CARD, prefer_wait=prefer_wait)
            self.buy(DECLINED_CARD, prefer_wait=prefer_wait)
            self.order_cart(prefer_wait=prefer_wait)
        self.cancel_order(after_completion=False)
        self.cancel_order(after_completion=True)
        self.list_orders()
        self.browse_pages(next_page=False)  # a page seen before: revalidated with If-None-Match

    # ------------------------------------------------------------ the mix: each task's choices by chance
    @tag("browse")
    @task(4)
    def browse_catalog(self) -> None:
        self.browse_pages(next_page=random.random() < 0.5)

    @tag("browse")
    @task(3)
    def browse_a_category(self) -> None:
        self.browse_category()

    @tag("browse")
    @task(3)
    def search(self) -> None:
        self.search_names(unfinished=random.random() < 0.5)

    @tag("browse")
    @task(4)
    def view_a_product(self) -> None:
        self.view_product()

    @tag("checkout")
    @task(2)
    def checkout(self) -> None:
        self.buy(APPROVED_CARD, prefer_wait=random.random() < 0.5)

    @tag("checkout")
    @task(1)
    def checkout_declined(self) -> None:
        self.buy(DECLINED_CARD, prefer_wait=random.random() < 0.5)

    @tag("cancel")
    @task(1)
    def cancel(self) -> None:
        self.cancel_order(after_completion=random.random() < 0.5)

    @tag("cart")
    @task(1)
    def cart_checkout(self) -> None:
        self.order_cart(prefer_wait=random.random() < 0.5)

    @tag("orders")
    @task(2)
    def my_orders(self) -> None:
        self.list_orders()

    # ------------------------------------------------------------ the longer steps
    def cancel_order(self, *, after_completion: bool) -> None:
        """Cancel an order at once (usually still pending) or once it completed (a refund)."""
        placed = self.place_order(self.basket(), APPROVED_CARD, prefer_wait=after_completion)
        if not placed:
            return
        order, sent = placed
        if after_completion:
            settled = self.follow(order, sent, COMPLETES, "checkout")
            if settled is None or settled.status != "COMPLETED":
                return
        cancelled_at = time.monotonic()
        with self.client.post(
            f"/orders/{order.order_id}/cancel",
            headers=self.auth,
            name="/orders/{order_id}/cancel",
            catch_response=True,
        ) as response:
            if response.status_code != 202:
                response.failure(f"{response.status_code}: {response.text[:300]}")
                return
            response.success()
        self.follow(order, cancelled_at, IS_CANCELLED, "refund" if after_completion else "cancel")

    def order_cart(self, *, prefer_wait: bool) -> None:
        """Fill an anonymous cart, merge it into the customer's cart (as at sign-in), order the cart.

        The cart empties when the order completes; it is not checked here, as users sharing a customer
        share its cart (the service and HTTP tiers check it).
        """
        token: str | None = None
        for sku, quantity in self.basket().items():
            headers = {CART_TOKEN_HEADER: token} if token is not None else {}
            body = SetCartItemRequest(quantity=quantity).model_dump(mode="json")
            with self.client.put(
                f"/cart/items/{sku}", json=body, headers=headers, name="/cart/items/{sku}", catch_response=True
            ) as response:
                if response.status_code != 200:
                    response.failure(f"{response.status_code}: {response.text[:300]}")
                    return
                token = token or response.headers.get(CART_TOKEN_HEADER)
                cart = CartView.model_validate_json(response.content)
                if token is None or sku not in {line.sku for line in cart.items}:
                    response.failure("a new anonymous cart without its token or its line")
                    return
                response.success()
        assert token is not None  # the basket has at least one line
        with self.client.post(
            "/cart/merge", headers={**self.auth, CART_TOKEN_HEADER: token}, name="/cart/merge", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:300]}")
                return
            response.success()
        placed = self.place_order(None, APPROVED_CARD, prefer_wait=prefer_wait)
        if placed:
            self.follow(*placed, COMPLETES, "cart checkout")

    def list_orders(self) -> None:
        with self.client.get("/orders?limit=10", headers=self.auth, name="/orders", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:300]}")
                return
            page = OrderPage.model_validate_json(response.content)
            if len({order.customer_id for order in page.items}) > 1:
                response.failure("GET /orders listed another customer's order")
                return
            response.success()


class FlashSaleShopper(ShopUser):
    """One SKU, few units, everyone at once: look at it, buy one."""

    weight = 1
    think_scale = 0.1

    def tour(self) -> None:
        """Look at the SKU, buy one unit: with more users than units, some sell out."""
        self.look()
        self.buy_one()

    @tag("flash")
    @task(1)
    def look(self) -> None:
        self.read_catalog(f"/products/{run.flash.sku}", name="/products/{sku}")

    @tag("flash")
    @task(3)
    def buy_one(self) -> None:
        tally = run.flash
        placed = self.place_order({tally.sku: 1}, APPROVED_CARD, prefer_wait=True)
        if not placed:
            return
        tally.orders_placed += 1
        settled = self.follow(*placed, SELLS_OR_SELLS_OUT, "flash sale")
        if settled is None or settled.status not in TERMINAL:
            return
        if settled.status == "COMPLETED":
            tally.orders_completed += 1
            tally.units_sold += sum(line.quantity for line in settled.items)
        elif settled.failure_reason == "OUT_OF_STOCK":
            tally.orders_sold_out += 1
        else:
            tally.orders_otherwise += 1
