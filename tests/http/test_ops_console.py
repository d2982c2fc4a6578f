"""The operators' console (`GET /ops`) in a real headless browser: Debian's chromium driven by Playwright.

The page is loaded as `make run` prints it (the admin token in the URL fragment), lists the orders
this test placed, opens one order's saga timeline and redrives a dead letter until it leaves the list;
the event pipeline panel shows a stream record set aside and an event a consumer failed on.
No browser is ever downloaded: Playwright launches /usr/bin/chromium (`make http` installs it).

With OPS_CONSOLE_SCREENSHOT=<path> the timeline test also saves a screenshot of the console showing a
timeline with compensations, and the pipeline test's rows (docs/ops-console.png is made that way).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect, sync_playwright

from infra.local.identity import DevIdentityProvider
from shop.config import recovery_settings
from shop.models.reconciliation import StockDiscrepancyLetter, StockDiscrepancyPage
from tests.http.conftest import RunningStack, physical_name
from tests.http.test_checkout_http import create_product, wait_for_terminal

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# A saga step retried against a failing provider, a redrive: seconds each on the HTTP tier's stack.
UI_TIMEOUT_MS = 90_000
DEADLINE_SECONDS = 90.0
CUSTOMER = "console-customer"
# Assertions wait as long as actions do: on a busy CI machine a listing can take more than the default 5 s.
expect.set_options(timeout=UI_TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make http` installs Debian's chromium (apt-get install chromium)")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def customer_auth(stack: RunningStack) -> dict[str, str]:
    """A customer of this test's own, so its orders never mix with those other tests count."""
    issuer = jwt.decode(stack.tokens["admin"], options={"verify_signature": False})["iss"]
    token = DevIdentityProvider.create(stack.state_dir / "dev-idp").token(CUSTOMER, issuer=issuer)
    return {"Authorization": f"Bearer {token}"}


def _place(stack: RunningStack, auth: dict[str, str], sku: str, payment_token: str) -> str:
    response = requests.post(
        stack.url("/orders"),
        headers={**auth, "Idempotency-Key": str(uuid.uuid4())},
        json={"items": [{"sku": sku, "quantity": 1}], "payment": {"token": payment_token}},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["order_id"])


def _poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)  # polling interval of the condition above


def _admin_order(stack: RunningStack, order_id: str) -> dict[str, Any]:
    response = requests.get(stack.url(f"/orders/{order_id}"), headers=stack.auth("admin"), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _dead_letter(stack: RunningStack, order_id: str) -> dict[str, Any] | None:
    listed = requests.get(stack.url("/admin/dead-letters?limit=100"), headers=stack.auth("admin"), timeout=10)
    assert listed.status_code == 200, listed.text
    return next((letter for letter in listed.json()["items"] if letter["order_id"] == order_id), None)


def _dead_lettered_order(stack: RunningStack, auth: dict[str, str], sku: str) -> str:
    """An order whose saga stopped half-way: NEEDS_ATTENTION with an OPEN dead letter.

    The provider fails every authorization of ``tok_processingError`` and the saga retries it for
    seconds; the test stops the execution then, as an operator or a timeout would. A Standard
    execution's stop reaches the stopped-execution handler, which dead-letters the order; an
    Express one sends no event, and the orphan sweeper dead-letters it once no execution can still
    run and its continuation window is over (the sweep is asked as of then).
    """
    order_id = _place(stack, auth, sku, "tok_processingError")
    _poll(lambda: _admin_order(stack, order_id)["status"] == "STOCK_RESERVED", f"order {order_id} to reserve stock")
    sfn = stack.aws("stepfunctions")
    machine = next(m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"] if "Checkout" in m["name"])
    pages = sfn.get_paginator("list_executions").paginate(stateMachineArn=machine, statusFilter="RUNNING")
    (running,) = [e for page in pages for e in page["executions"] if e["name"] == order_id]
    sfn.stop_execution(executionArn=running["executionArn"])

    def nothing_running() -> bool:
        machines = [m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]]
        return not any(sfn.list_executions(stateMachineArn=m, statusFilter="RUNNING")["executions"] for m in machines)

    # The sweep judges every order in progress: only once no other saga of this stack runs.
    _poll(nothing_running, "every saga of the stack to end")
    # Past the time an Express saga that stopped is continued rather than dead-lettered.
    later = (datetime.now(UTC) + timedelta(seconds=recovery_settings().express_continue_for_seconds + 600)).isoformat()
    swept = stack.aws("lambda").invoke(
        FunctionName=stack.function("ResumeOrphanedOrdersFunction"),
        Payload=json.dumps({"source": "aws.events", "detail-type": "Scheduled Event", "time": later}),
    )
    assert "FunctionError" not in swept, swept["Payload"].read()
    _poll(lambda: (_dead_letter(stack, order_id) or {}).get("status") == "OPEN", f"the dead letter of order {order_id}")
    return order_id


def _open_console(
    browser: Browser, stack: RunningStack, errors: list[str], before_load: Callable[[Page], None] | None = None
) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(UI_TIMEOUT_MS)
    if before_load:
        before_load(page)

    def on_console(message: ConsoleMessage) -> None:
        # A CSP violation or a script error. Chromium also reports every 4xx answer here (the
        # reconciliation's 404 before its first run, the favicon): those are answers, not errors.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(stack.url(f"/ops#token={stack.tokens['admin']}"))
    return page


def test_the_event_pipeline_panel_shows_what_waits_for_a_retry(stack: RunningStack, browser: Browser) -> None:
    # A stream record no publisher can read: an order item written behind the shop's back.
    dynamodb = stack.aws("dynamodb")
    orders_table = stack.table("OrdersTable")
    hand_written = f"hand-written-{uuid.uuid4().hex[:8]}"
    dynamodb.put_item(TableName=orders_table, Item={"order_id": {"S": hand_written}, "status": {"S": "SHIPPED"}})

    def set_aside() -> dict[str, Any] | None:
        listed = requests.get(
            stack.url("/admin/unreadable-records?limit=100"), headers=stack.auth("admin"), timeout=10
        ).json()
        return next((r for r in listed["items"] if r["keys"] == {"order_id": hand_written}), None)

    _poll(lambda: set_aside() is not None, f"the stream record of {hand_written} to be set aside")
    # An event a consumer failed on (here one naming no function: the redriver keeps it for an operator).
    sqs = stack.aws("sqs")
    queue = physical_name(sqs.list_queues()["QueueUrls"], "ConsumerFailuresQueue")
    sqs.send_message(QueueUrl=queue, MessageBody="not an event")
    # A stock discrepancy letter: only a reconciliation run opens one, and none runs on this shared
    # stack, so the API's answer is served to the page as the model writes it.
    letter = StockDiscrepancyLetter(
        sku="CONSOLE-SKU",
        status="OPEN",
        kinds=["stock_mismatch"],
        detail="initial 10 + adjustments 0 != available 7 + held 0 + committed 2",
        first_seen_at="2026-11-30T10:00:00Z",
        last_seen_at="2026-11-30T11:00:00Z",
        runs_seen=2,
    )
    resolved = letter.model_copy(update={"sku": "RESOLVED-SKU", "status": "RESOLVED"})
    letters = StockDiscrepancyPage(items=[letter, resolved], next_token=None).model_dump_json()

    def serve_letters(page: Page) -> None:
        page.route(
            "**/admin/stock-discrepancies?*",
            lambda route: route.fulfill(status=200, content_type="application/json", body=letters),
        )

    errors: list[str] = []
    page = _open_console(browser, stack, errors, before_load=serve_letters)

    expect(page.locator("#message")).to_contain_text("Updated")
    # The message is waiting, or in the redriver's hands if its schedule fired meanwhile: counted either way.
    summary = page.locator("#consumer-failures.waiting")
    expect(summary).to_contain_text(re.compile(r"\d+ waiting for the next redrive, \d+ being handed back"))
    record = set_aside()
    assert record is not None
    row = page.locator(f'#unreadable-records tbody tr[data-record-id="{record["record_id"]}"]')
    expect(row).to_contain_text(f"order_id={hand_written}")
    expect(row).to_contain_text("ValidationError")
    expect(page.locator('#stock-discrepancies tbody tr[data-sku="CONSOLE-SKU"]')).to_contain_text("stock_mismatch")
    expect(page.locator('#stock-discrepancies tbody tr[data-sku="RESOLVED-SKU"]')).to_have_count(0)

    # The record will never be published (junk written behind the shop's back): dismissed from the
    # page with the operator's reason, it leaves the list, and the API keeps the reason.
    row.locator("input[name=reason]").fill("junk from a hand edit; item deleted")
    row.locator("button", has_text="Dismiss").click()
    expect(row).to_have_count(0)
    expect(page.locator("#message")).to_contain_text(f"Record {record['record_id']} dismissed.")
    dismissed = set_aside()
    assert dismissed is not None
    assert (dismissed["status"], dismissed["dismissal_reason"]) == ("DISMISSED", "junk from a hand edit; item deleted")
    assert errors == []
    page.close()


def test_the_console_lists_orders_opens_a_timeline_and_redrives_a_dead_letter(
    stack: RunningStack, browser: Browser, customer_auth: dict[str, str]
) -> None:
    sku = create_product(stack, stock=10)
    completed = _place(stack, customer_auth, sku, "tok_visa")
    assert wait_for_terminal(stack, "admin", completed)["status"] == "COMPLETED"
    stuck = _dead_lettered_order(stack, customer_auth, sku)
    someone_elses = _place(stack, stack.auth("alice"), sku, "tok_visa")  # listed only when unfiltered
    errors: list[str] = []

    # The page's first listing (every order of the stack) is held until the operator's filter has
    # answered: when it comes back last it must not paint the unfiltered list over the filtered one.
    held_listings: list[Route] = []

    def unfiltered_listing(url: str) -> bool:
        address = urlsplit(url)
        return address.path.endswith("/admin/orders") and "customer" not in parse_qs(address.query)

    def hold_listing(route: Route) -> None:
        held_listings.append(route)

    def hold_listings(page: Page) -> None:
        page.route(unfiltered_listing, hold_listing)

    page = _open_console(browser, stack, errors, before_load=hold_listings)

    # The token left the address bar; the page keeps it in sessionStorage.
    expect(page).to_have_url(stack.url("/ops"))
    # The orders this test placed, narrowed to its customer.
    page.fill("#order-filters input[name=customer]", CUSTOMER)
    page.click("#order-filters button[type=submit]")
    expect(page.locator("#message")).to_contain_text("Orders filtered")
    assert len(held_listings) == 1
    with page.expect_response(lambda response: unfiltered_listing(response.url)):
        held_listings[0].continue_()
    page.unroute(unfiltered_listing, hold_listing)
    expect(page.locator("#message")).to_contain_text("Updated")  # the held listing has answered too
    expect(page.locator(f'#orders tbody tr[data-order-id="{someone_elses}"]')).to_have_count(0)
    for order_id in (completed, stuck):
        expect(page.locator(f'#orders tbody tr[data-order-id="{order_id}"]')).to_be_visible()
    expect(page.locator("#orders tbody tr")).to_have_count(2)
    page.select_option("#order-filters select[name=status]", "NEEDS_ATTENTION")
    page.click("#order-filters button[type=submit]")
    expect(page.locator("#orders tbody tr")).to_have_count(1)
    expect(page.locator(f'#orders tbody tr[data-order-id="{stuck}"]')).to_be_visible()
    page.select_option("#order-filters select[name=status]", "")
    page.fill("#order-filters input[name=since]", "2999-01-01T00:00:00")  # UTC, after every order
    page.click("#order-filters button[type=submit]")
    expect(page.locator("#orders tbody tr")).to_have_count(0)
    page.fill("#order-filters input[name=since]", "")
    page.click("#order-filters button[type=submit]")
    expect(page.locator("#orders tbody tr")).to_have_count(2)

    # One order's saga timeline: every history step, in order, each with its time.
    page.click(f'#orders tbody tr[data-order-id="{completed}"] button')
    history = _admin_order(stack, completed)["history"]
    steps = page.locator("#timeline li")
    expect(steps).to_have_count(len(history))
    assert [step.get_attribute("data-step") for step in steps.all()] == [entry["step"] for entry in history]
    expect(steps.last.locator(".step-at")).to_have_text(history[-1]["at"])
    expect(steps.nth(1).locator(".duration")).to_contain_text("+")
    expect(page.locator("#timeline li.compensation")).to_have_count(0)  # a completed checkout compensated nothing

    # The dead letter, redriven from the page, leaves the list of open letters.
    letter = page.locator(f'#dead-letters tbody tr[data-order-id="{stuck}"]')
    expect(letter).to_be_visible()
    letter.locator("button.redrive").click()
    expect(letter).to_have_count(0)
    assert (_dead_letter(stack, stuck) or {}).get("status") == "RESOLVED"
    assert _admin_order(stack, stuck)["status"] == "CANCELLED"

    # Its timeline now shows the compensations in their own colour. The refresh re-reads the open
    # timeline (the completed order's); that answer is held until the operator has opened another
    # order, and when it comes back last it must not paint the old order over the new one.
    held: list[Route] = []
    old_timeline = f"**/orders/{completed}"

    def hold(route: Route) -> None:
        held.append(route)

    page.route(old_timeline, hold)
    with page.expect_request(old_timeline):
        page.click("#refresh")
    page.click(f'#orders tbody tr[data-order-id="{stuck}"] button')
    expect(page.locator("#timeline-order")).to_contain_text(stuck)
    with page.expect_response(old_timeline):
        for route in held:
            route.continue_()
    page.unroute(old_timeline, hold)
    expect(page.locator("#timeline")).to_have_attribute("aria-busy", "false")
    expect(page.locator("#timeline-order")).to_contain_text(stuck)
    expect(page.locator('#timeline li.compensation[data-step="release_stock"]').first).to_be_visible()

    # The other panels answered: breakers, stock (this test's product), the reconciliation panel.
    expect(page.locator("#breakers tbody tr")).not_to_have_count(0)
    expect(page.locator(f'#stock tbody tr[data-sku="{sku}"]')).to_be_visible()
    expect(page.locator("#reconciliation")).not_to_be_empty()
    assert errors == []

    screenshot = os.environ.get("OPS_CONSOLE_SCREENSHOT")
    if screenshot:
        page.screenshot(path=screenshot, full_page=True)
    page.close()


def test_without_a_token_the_console_asks_for_one_and_calls_nothing(stack: RunningStack, browser: Browser) -> None:
    page = browser.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    page.goto(stack.url("/ops"))

    expect(page.locator("#message")).to_contain_text("no token")
    assert requested == [stack.url("/ops")]
    page.close()
