"""`make chaos`: a randomized, seeded workload against the local stack with faults at every seam,
then everything healthy again, the sweepers and the redrives, then the books checked.

    python -m infra.local.chaos [--orders 300] [--seed 1] [--profile light|hostile|none] [--concurrency 72]

1. Start the stack in this process (moto, free ports; moto's DynamoDB in a process of its own,
   its faults entering where the stack's clients hand it their requests), create scarce and plentiful SKUs
   (one of them purchase-limited),
   and plant items no version of the shop wrote (``UNREADABLE_ITEMS``: an order in progress, an expired
   hold, a payment, a stock counter) where the sweepers, the listings, the sales and the books check read.
2. With the fault profile on (``infra/local/faults.py``): several customers place multi-line
   orders paid with every test token, from concurrent clients; a client retries with the same
   Idempotency-Key after an error, sometimes sends a concurrent duplicate, sometimes repeats a
   request whose answer it got (as after a timeout), and cancels at random moments (a timer
   fires the cancel, so the client goes on shopping). A client waits a little for its order's
   saga to end before the next one, as a shopper waits for the confirmation, so the emulator is
   not buried under thousands of sagas in flight.
3. Faults off. Wait until no saga runs; run the orphan sweeper; redrive every open dead letter
   (as an operator would) until none is left open; wait again.
4. Run the holds' sweeper once more and list every order as an operator would; deliver what is
   left of the tables' streams (delivered to the publishers all along, through the faults), the
   bus's Lambda targets and the consumers' failures; run the invariant checker
   (``shop.domain.reconciliation_job.run(quiescent=True)``) and audit the events against the orders
   (``infra/local/event_audit.py``); print a summary: orders by final status and reason, faults
   injected by kind, the planted items reported, the events, what was checked and every violation.
   Exit 1 on any violation (a planted item not reported, or its stream record not set aside, is
   one), printing the seed and each violating order's history.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from botocore.config import Config

from infra.local import event_audit
from infra.local.bench import _free_port
from infra.local.event_audit import BusRecorder, OrderBooks, StockMarker
from infra.local.faults import PROFILES, PROVIDER_OUTAGE_SECONDS, FaultInjector

TOKENS = (("tok_visa", 70), ("tok_flaky", 12), ("tok_chargeDeclined", 10), ("tok_processingError", 8))
CUSTOMERS = ("alice", "bob", "carol", "dave", "erin", "frank")
# Scarce SKUs make orders compete for the last units; plentiful ones let most orders complete.
SCARCE = {"CHAOS-SCARCE-1": 40, "CHAOS-SCARCE-2": 60, "CHAOS-SCARCE-3": 25}
PLENTIFUL = {f"CHAOS-ITEM-{n}": 100_000 for n in range(1, 6)}
# A plentiful SKU with a purchase limit per customer, low enough that each customer reaches it: an
# order past it is refused (422) or cancelled at its reservation (PURCHASE_LIMIT_EXCEEDED); a cancel,
# or a refund before completion, gives its units back (a refund after completion does not), and the
# books check judges every customer's counter.
LIMITED = {"CHAOS-LIMITED-1": 100_000}
PURCHASE_LIMIT = 8
QUIET_POLLS = 3
TIMEOUT = 30
# A client waits for its order's saga to end before placing its next order, as a shopper waits for
# the outcome: the sagas in flight stay about one per client. (With a short fixed wait instead, the
# clients offered orders faster than the emulator ended sagas: at 96 clients, 500 executions ran at
# once after 1,500 orders, each with its threads, and a 10,000-order run stalled at 26,000 threads.)
# An order whose saga did not start (StartExecution throttled: an orphan) is waited for too, until the
# scheduled sweeper starts its saga and it ends, as a shopper would wait. (With a 2 s pause instead, 192
# clients placed nearly the whole workload within one 10 s StartExecution outage: 252 of a 300-order
# run's sagas ran after the faults were off, and proved nothing about them.)
SAGA_WAIT_SECONDS = 120.0


@dataclass
class Workload:
    api: str
    tokens: dict[str, str]
    admin: str
    seed: int
    watcher: Any = None  # infra.local.bench.SagaWatcher: when each saga ended
    order_ids: set[str] = field(default_factory=set)
    cancels: list[threading.Timer] = field(default_factory=list)
    client_events: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # One keep-alive session per client thread, as a browser keeps its connection: a new connection
    # per request costs the stack (in this process) a server thread each time.
    sessions: threading.local = field(default_factory=threading.local)

    def headers(self, who: str, key: str | None = None) -> dict[str, str]:
        token = self.admin if who == "admin" else self.tokens[who]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def note(self, event: str) -> None:
        with self.lock:
            self.client_events[event] += 1

    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self.sessions, "session", None)
        if session is None:
            session = self.sessions.session = requests.Session()
        return session

    def post(self, path: str, headers: dict[str, str], body: Any = None) -> requests.Response:
        """A client that retries what a client should retry, with backoff, for up to 90 s: 5xx, no
        answer, and 409 "in progress" (a request whose answer was lost holds its Idempotency-Key
        until the API function's own timeout has passed)."""
        last = "no answer"
        deadline = time.monotonic() + 90
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            try:
                response = self.session().post(self.api + path, headers=headers, json=body, timeout=TIMEOUT)
            except requests.RequestException as error:
                last = f"no answer ({type(error).__name__}: {error})"[:300]
                self.note("client_retry_no_answer")
            else:
                if response.status_code < 500 and not (response.status_code == 409 and "in-use" in response.text):
                    return response
                last = f"{response.status_code} {response.text[:300]}"
                self.note(f"client_retry_{response.status_code}")
            time.sleep(min(2.0, 0.1 * 2**attempt))
        raise RuntimeError(f"POST {path} kept failing: {last}")

    def place(self, number: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + number)
        who = rng.choice(CUSTOMERS)
        skus = rng.sample([*SCARCE, *PLENTIFUL, *LIMITED], rng.choice((1, 1, 2, 3)))
        token = rng.choices([t for t, _ in TOKENS], weights=[w for _, w in TOKENS])[0]
        body = {"items": [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in skus], "payment": {"token": token}}
        key = f"chaos-{self.seed}-{number}"
        headers = self.headers(who, key)
        duplicate = None
        if rng.random() < 0.05:  # a concurrent duplicate of the same request
            duplicate = threading.Thread(target=self.post, args=("/orders", headers, body), daemon=True)
            duplicate.start()
            self.note("concurrent_duplicate")
        response = self.post("/orders", headers, body)
        if duplicate is not None:
            duplicate.join(TIMEOUT)
        if response.status_code == 422 and response.json().get("type") == "urn:shop:problem:purchase-limit-exceeded":
            if not LIMITED.keys() & set(skus):
                with self.lock:
                    self.problems.append(f"order {number}: refused over a limit it has no line of: {response.text}")
            self.note("refused_past_purchase_limit")
            return
        if response.status_code != 202:
            with self.lock:
                self.problems.append(f"order {number}: POST /orders answered {response.status_code} {response.text}")
            return
        order_id = response.json()["order_id"]
        with self.lock:
            self.order_ids.add(order_id)
        if rng.random() < 0.1:  # the answer was lost on the way: the client asks again
            again = self.post("/orders", headers, body)
            self.note("repeated_after_lost_answer")
            if again.status_code != 202 or again.json()["order_id"] != order_id:
                with self.lock:
                    self.problems.append(
                        f"order {number}: a repeated request answered {again.status_code} {again.text}"
                    )
        if rng.random() < 0.15:
            # Early cancels meet the checkout saga, late ones a completed order (a refund).
            delay = rng.choice((rng.uniform(0.0, 1.5), rng.uniform(5.0, 40.0)))
            timer = threading.Timer(delay, self.cancel, args=(order_id, who))
            timer.daemon = True
            with self.lock:
                self.cancels.append(timer)
            timer.start()
        if self.watcher is not None:
            self.watcher.ended(order_id, SAGA_WAIT_SECONDS)

    def cancel(self, order_id: str, who: str) -> None:
        try:
            cancelled = self.post(f"/orders/{order_id}/cancel", self.headers(who))
        except RuntimeError as error:
            with self.lock:
                self.problems.append(f"order {order_id}: cancel kept failing: {error}")
            return
        self.note("cancel")
        if cancelled.status_code != 202:
            with self.lock:
                self.problems.append(f"order {order_id}: cancel answered {cancelled.status_code} {cancelled.text}")

    def wait_for_cancels(self) -> None:
        with self.lock:
            timers = list(self.cancels)
        for timer in timers:
            timer.join()


def _progress(label: str, done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r  {label:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()
    if done >= total:
        sys.stderr.write("\n")


def _running(stepfunctions: Any, machines: list[str]) -> int:
    running = 0
    for machine in machines:
        try:
            for page in stepfunctions.get_paginator("list_executions").paginate(
                stateMachineArn=machine, statusFilter="RUNNING"
            ):
                running += len(page["executions"])
        except stepfunctions.exceptions.InvalidToken:
            # moto's next token names the next RUNNING execution; one that ended between two pages
            # voids it. Executions are still ending, so this is not quiet: the caller polls again.
            return max(running, 1)
    return running


def _wait_quiet(stepfunctions: Any, machines: list[str], deadline_seconds: float) -> None:
    """Until no execution of either saga has been running for a few polls in a row."""
    until = time.monotonic() + deadline_seconds
    quiet = 0
    while quiet < QUIET_POLLS:
        if time.monotonic() > until:
            raise SystemExit(f"sagas still running after {deadline_seconds:.0f} s")
        quiet = quiet + 1 if _running(stepfunctions, machines) == 0 else 0
        time.sleep(0.5)


def _open_letters(workload: Workload) -> list[str]:
    open_ids: list[str] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if token:
            params["next_token"] = token
        page = requests.get(
            workload.api + "/admin/dead-letters", headers=workload.headers("admin"), params=params, timeout=TIMEOUT
        ).json()
        open_ids += [letter["order_id"] for letter in page["items"] if letter["status"] == "OPEN"]
        token = page.get("next_token")
        if not token:
            return open_ids


def _sweep_orphans(lambda_client: Any, function_name: str) -> dict[str, Any]:
    """As the schedule would, but as of a moment past the bound (every orphan is due), and again at
    once while a run stops before its timeout with orphans left (thousands after a long run)."""
    swept: dict[str, Any] = {"started": [], "settled": []}
    while True:
        at = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
        response = lambda_client.invoke(FunctionName=function_name, Payload=json.dumps({"time": at}))
        sweep = json.loads(response["Payload"].read())
        if response.get("FunctionError"):
            raise RuntimeError(f"the orphan sweeper failed: {sweep}")
        swept["started"] += sweep["started"]
        swept["settled"] += sweep["settled"]
        if not sweep["stopped_early"]:
            return swept


# Items no version of the shop wrote (a hand edit, or a newer version's write read by an older one after
# a rollback), planted before the workload where the sweepers, the listings and the books check read:
# an order in progress placed long ago, an expired hold, a payment. None may stop any of them, and the
# books check must report exactly these (record_unreadable), by table and key.
UNREADABLE_ITEMS: dict[str, dict[str, Any]] = {
    "OrdersTable": {
        "order_id": {"S": "chaos-unreadable-order"},
        "status": {"S": "SHIPPING"},
        "customer_id": {"S": "legacy-customer"},
        "in_progress_for": {"S": "legacy-customer"},
        "created_at": {"S": "2000-01-01T00:00:00.000Z"},
        "created_key": {"S": "2000-01-01T00:00:00.000Z#chaos-unreadable-order"},
    },
    "ReservationsTable": {
        "reservation_id": {"S": "chaos-unreadable-hold"},
        "status": {"S": "RESERVED"},
        "expires_at": {"N": "946684800"},
        "lines": {"S": "two units of something"},
    },
    "PaymentsTable": {"order_id": {"S": "chaos-unreadable-payment"}, "status": {"S": "SETTLING"}},
    # A stock counter of a SKU on sale, beyond its shards and with its units as text: it must hold
    # nothing for the shop, and stop no catalog read, sale or StockLow judgement of that SKU.
    "StockTable": {"sku": {"S": "CHAOS-ITEM-5"}, "shard": {"N": "7"}, "available": {"S": "seven"}},
}


def plant_unreadable_items(dynamodb: Any, table_names: dict[str, str]) -> set[tuple[str, str]]:
    """Write ``UNREADABLE_ITEMS``; the (table, key value) the books check must report."""
    from shop.repositories.inventory import held_key

    planted = set()
    for table, item in UNREADABLE_ITEMS.items():
        item = dict(item)
        if table == "ReservationsTable":  # in the sweeper's index, in the shard its id belongs to
            item["held"] = {"S": held_key(item["reservation_id"]["S"])}
        dynamodb.put_item(TableName=table_names[table], Item=item)
        key = item.get("order_id") or item.get("reservation_id") or item["sku"]
        planted.add((table, key["S"]))
    return planted


def _sweep_holds(lambda_client: Any, function_name: str) -> int:
    """One run of the expired holds' sweeper, as its schedule invokes it; the holds it released."""
    response = lambda_client.invoke(FunctionName=function_name, Payload=json.dumps({"source": "aws.events"}))
    sweep = json.loads(response["Payload"].read())
    if response.get("FunctionError"):
        raise RuntimeError(f"the expired holds' sweeper failed: {sweep}")
    return int(sweep["released"])


def _every_order_listed(workload: Workload) -> int:
    """Every page of the operators' unfiltered listing (a scan of the table); the orders listed."""
    listed = 0
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = requests.get(
            workload.api + "/admin/orders", headers=workload.headers("admin"), params=params, timeout=TIMEOUT
        )
        if page.status_code != 200:
            raise RuntimeError(f"GET /admin/orders answered {page.status_code}: {page.text[:300]}")
        listed += len(page.json()["items"])
        if not page.json()["next_token"]:
            return listed
        params["next_token"] = page.json()["next_token"]


def _deliver_every_event(stack: Any, lambda_client: Any) -> dict[str, int]:
    """Faults off: the tables' streams delivered to the publishers, the bus's Lambda targets run, and
    what the consumers failed on handed back by their redriver, until nothing is left in flight."""
    from infra.local import moto_events
    from infra.local.streams import deliver_all

    delivered = redelivered = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        moved = deliver_all(stack.stream_deliveries)
        if not moto_events.wait_for_deliveries(120):
            raise RuntimeError("the bus's Lambda targets still run after 120 s")
        redriver = stack.deployed.function_names["RedriveConsumerFailuresFunction"]
        response = lambda_client.invoke(FunctionName=redriver, Payload=b"{}")
        redrive = json.loads(response["Payload"].read())
        if response.get("FunctionError"):
            raise RuntimeError(f"the consumers' redriver failed: {redrive}")
        if not moto_events.wait_for_deliveries(120):
            raise RuntimeError("the bus's Lambda targets still run after 120 s")
        delivered += moved
        redelivered += int(redrive["redelivered"])
        if moved == 0 and not any(redrive.values()):
            return {"stream_records": delivered, "consumer_events_redriven": redelivered}
    raise RuntimeError("stream records or consumer failures still waiting after 300 s")


def _queued_emails(dynamodb: Any, table: str) -> dict[str, str]:
    """The notification outbox: each queued e-mail's event id -> its order id."""
    emails: dict[str, str] = {}
    for page in dynamodb.get_paginator("scan").paginate(TableName=table):
        emails |= {item["event_id"]["S"]: item["order_id"]["S"] for item in page["Items"]}
    return emails


def _stock_markers(dynamodb: Any, table: str) -> dict[str, StockMarker]:
    """Every SKU's StockLow marker (OperationsTable ``stock-low#<sku>``), by SKU."""
    markers: dict[str, StockMarker] = {}
    pages = dynamodb.get_paginator("scan").paginate(
        TableName=table,
        FilterExpression="begins_with(pk, :marker) AND sk = :sk",
        ExpressionAttributeValues={":marker": {"S": "stock-low#"}, ":sk": {"S": "marker"}},
    )
    for page in pages:
        for item in page["Items"]:
            markers[item["pk"]["S"].removeprefix("stock-low#")] = StockMarker(
                fall=int(item["fall"]["N"]),
                low=bool(item.get("low", {}).get("BOOL")),
                published=bool(item.get("published", {}).get("BOOL")),
            )
    return markers


def default_workflow_type() -> str:
    """The template's default WorkflowType (what `make run` and a plain deploy use)."""
    from infra.local.template import load_template, parameter_defaults

    return parameter_defaults(load_template())["WorkflowType"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="light")
    parser.add_argument("--concurrency", type=int, default=192)
    parser.add_argument("--redrive-rounds", type=int, default=5)
    parser.add_argument(
        "--workflow-type",
        choices=["STANDARD", "EXPRESS"],
        default=None,
        help="the template's WorkflowType (default: the template's default)",
    )
    args = parser.parse_args(argv)
    if args.workflow_type is None:
        args.workflow_type = default_workflow_type()
    # The expected warnings (orphans started, redrives) and one metric line per order would bury
    # the progress bar: only errors reach the console.
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")

    from infra.local import moto_dynamodb, moto_events
    from infra.local.bench import SagaWatcher
    from infra.local.identity import DevIdentityProvider
    from infra.local.stack import start_stack

    started = time.monotonic()
    state_dir = Path(tempfile.mkdtemp(prefix="shop-chaos-"))
    dynamodb = moto_dynamodb.MotoDynamoDBProcess.start()
    moto_dynamodb.install_client_transport(dynamodb)  # before the stack builds its clients
    try:
        stack = start_stack(
            api_port=_free_port(),
            aws_port=_free_port(),
            state_dir=state_dir,
            seed=False,
            # Short retry waits keep a run short; the ASL's retry policy is otherwise the deployed one.
            # The orphan bound is compressed the same way, so the scheduled sweeper resumes orphans
            # while the workload runs (and races the API's own starts), not all at once at the end.
            parameters={
                "RetryIntervalSeconds": "1",
                "RetryMaxDelaySeconds": "2",
                "OrphanAfterSeconds": "15",
                # A run compresses time (the retry waits above), the breaker's cooldown too: scaled to
                # the provider's outage windows (the runtime parameter's initial value). With the
                # deployed 30 s, one outage and an unlucky probe keep the breaker open for most of a
                # short run: nearly every order then ends PAYMENT_UNAVAILABLE and the provider's own
                # faults are hardly exercised.
                "PaymentBreakerCooldownSeconds": str(PROVIDER_OUTAGE_SECONDS),
                "WorkflowType": args.workflow_type,
                # A handful of customers place every order of the run, 192 at a time: the fairness
                # limit (429 past 5 orders in progress per customer) is lifted, as it is not under test.
                "MaxOrdersInProgress": "100000",
            },
            dynamodb_endpoint=dynamodb.endpoint,
            # The tables' streams live in moto's DynamoDB process too: delivered to the publishers as
            # Lambda would, faults and all, so that the events are audited with the books.
            streams_endpoint=dynamodb.endpoint,
            access_log=False,
        )
    except BaseException:
        dynamodb.stop()
        raise
    injector = FaultInjector(PROFILES[args.profile], args.seed, args.workflow_type)
    watcher = SagaWatcher()
    moto_events.execution_listeners.append(watcher)
    bus = BusRecorder()
    moto_events.published_listeners.append(bus)
    try:
        tokens = json.loads(stack.tokens_path.read_text())
        identity = DevIdentityProvider.create(state_dir / "dev-idp")
        issuer = os.environ["AUTH_ISSUER"]
        workload = Workload(
            api=stack.api_url,
            tokens={name: identity.token(name, issuer=issuer) for name in CUSTOMERS},
            admin=tokens["admin"],
            seed=args.seed,
            watcher=watcher,
        )
        for sku, stock in {**SCARCE, **PLENTIFUL, **LIMITED}.items():
            created = requests.post(
                stack.api_url + "/products",
                headers=workload.headers("admin"),
                json={"sku": sku, "name": sku, "category": "chaos", "price": {"amount": 1999}, "stock": stock},
                timeout=TIMEOUT,
            )
            created.raise_for_status()
        for sku in LIMITED:
            requests.patch(
                f"{stack.api_url}/products/{sku}",
                headers=workload.headers("admin"),
                json={"purchase_limit": PURCHASE_LIMIT},
                timeout=TIMEOUT,
            ).raise_for_status()
        stepfunctions = stack.client("stepfunctions")
        machines = list(stack.deployed.state_machine_arns.values())
        from shop import aws

        # Through the shop's own client: the tables live in moto's DynamoDB process, which it reaches.
        planted = plant_unreadable_items(aws.dynamodb(), stack.deployed.table_names)

        injector.start()
        placed = 0
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            futures = [pool.submit(workload.place, number) for number in range(args.orders)]
            for number, future in enumerate(futures):
                try:
                    future.result()
                except RuntimeError as error:  # a client that gave up: a finding, not a crash
                    with workload.lock:
                        workload.problems.append(f"order {number}: {error}")
                placed += 1
                _progress("placing", placed, args.orders)
        workload_seconds = time.monotonic() - started
        workload.wait_for_cancels()
        _wait_quiet(stepfunctions, machines, 900)
        injector.stop()

        # One attempt, waiting as long as the sweeper may run (the template's 60 s) and more.
        lambda_client = stack.client(
            "lambda", config=Config(read_timeout=120, retries={"mode": "standard", "total_max_attempts": 1})
        )
        sweeper = stack.deployed.function_names["ResumeOrphanedOrdersFunction"]
        sweeps = [_sweep_orphans(lambda_client, sweeper)]
        _wait_quiet(stepfunctions, machines, 600)
        redriven = 0
        for _ in range(args.redrive_rounds):
            letters = _open_letters(workload)
            # A run the sweep started (an orphan, or an Express saga it continued) may stop unsettled too.
            if not letters and not sweeps[-1]["started"]:
                break
            for order_id in letters:
                workload.post(f"/admin/dead-letters/{order_id}/redrive", workload.headers("admin"))
                redriven += 1
            _wait_quiet(stepfunctions, machines, 600)
            sweeps.append(_sweep_orphans(lambda_client, sweeper))
            _wait_quiet(stepfunctions, machines, 600)
        try:
            holds_released = _sweep_holds(
                lambda_client, stack.deployed.function_names["ReleaseExpiredReservationsFunction"]
            )
            orders_listed = _every_order_listed(workload)
        except (RuntimeError, requests.RequestException) as error:
            workload.problems.append(str(error))
            holds_released = orders_listed = 0
        try:
            deliveries = _deliver_every_event(stack, lambda_client)
        except RuntimeError as error:
            workload.problems.append(str(error))
            deliveries = {}

        from shop.domain import reconciliation_job
        from shop.repositories import audit

        report = reconciliation_job.run(quiescent=True)
        # One parallel scan, not a GET per order: a 10,000-order run would spend minutes here.
        final = {order.order_id: order for order in audit.orders().records if order.order_id in workload.order_ids}
        outcomes = Counter(f"{o.status} {o.failure_reason or ''}".strip() for o in final.values())

        def planted_key(d: Any) -> tuple[str, str]:
            return d.detail.split(" item ", 1)[0], d.order_id or d.sku or ""

        reported = {planted_key(d) for d in report.discrepancies if d.kind == "record_unreadable"}
        workload.problems += [
            f"planted unreadable item not reported: {table} {key}" for table, key in planted - reported
        ]
        from shop.repositories import unreadable_records

        # The planted order's INSERT is the one stream record a publisher cannot read: set aside, not lost.
        set_aside = {(r.source, r.keys.get("order_id", "")) for r in unreadable_records.open_records()}
        expected_aside = {("orders", UNREADABLE_ITEMS["OrdersTable"]["order_id"]["S"])}
        event_problems = [f"planted order's stream record not set aside: {key}" for key in expected_aside - set_aside]
        event_problems += [f"a stream record set aside that is readable: {key}" for key in set_aside - expected_aside]
        events = event_audit.audit(
            {
                order_id: OrderBooks(order_id, order.status, frozenset(entry.status for entry in order.history))
                for order_id, order in final.items()
            },
            bus.events,
            _queued_emails(aws.dynamodb(), stack.deployed.table_names["NotificationsTable"]),
        )
        event_problems += events.problems
        from shop.config import inventory_settings
        from shop.repositories import event_records

        stock_now = audit.product_stock().by_sku
        event_problems += event_audit.audit_stock(
            _stock_markers(aws.dynamodb(), stack.deployed.table_names["OperationsTable"]),
            {sku: available for sku, (available, _, _) in stock_now.items()},
            inventory_settings().low_stock_threshold,
            bus.events,
            [alert.event_id for alert in event_records.low_stock_alerts()],
        )
        stock_lows = len({event.event_id for event in bus.events if event.detail_type == "StockLow"})
        violations = [
            d for d in report.discrepancies if not (d.kind == "record_unreadable" and planted_key(d) in planted)
        ]
        wall = time.monotonic() - started
        print(
            f"\nmake chaos: {args.orders} orders, seed {args.seed}, profile {args.profile}, "
            f"{args.concurrency} clients, {args.workflow_type} sagas"
        )
        print("  orders by final status:")
        for outcome, count in sorted(outcomes.items()):
            print(f"    {outcome:<40} {count}")
        print(f"  faults injected:        {sum(injector.injected.values())}  {injector.summary()}")
        if injector.never_injected():
            # Not the shop's violation, but the run is no proof for them: say so rather than pass quietly.
            print(f"  never injected:         {', '.join(injector.never_injected())} (no proof of these kinds)")
        print(f"  client behaviour:       {json.dumps(dict(sorted(workload.client_events.items())))}")
        print(
            f"  orphan sweeps:          {len(sweeps)} after the workload: started "
            f"{sum(len(sweep.get('started', [])) for sweep in sweeps)}, "
            f"settled {sum(len(sweep.get('settled', [])) for sweep in sweeps)}"
        )
        print(f"  redrives:               {redriven}")
        print(
            f"  unreadable items:       {len(planted)} planted, {len(planted & reported)} reported by the books "
            f"check; then the holds' sweeper released {holds_released}, the orders' listing showed {orders_listed}"
        )
        print(
            f"  events:                 {events.distinct} order events published ({events.puts - events.distinct} "
            f"put again by a redelivery), {events.emails} e-mails queued; {len(set_aside)} stream record set aside; "
            f"{stock_lows} StockLow; after the workload {json.dumps(deliveries)}"
        )
        print(f"  checked:                {report.checked.model_dump_json()}")
        print(
            f"  violations:             "
            f"{len(violations) + report.omitted + len(workload.problems) + len(event_problems)}"
        )
        print(f"  wall time:              {wall:.0f} s  ({args.orders / workload_seconds:.1f} orders/s placed)")
        for problem in event_problems:
            print(f"  EVENTS: {problem}")
        for problem in workload.problems:
            print(f"  CLIENT: {problem}")
        for violation in violations:
            print(f"  VIOLATION {violation.kind} order={violation.order_id} sku={violation.sku}: {violation.detail}")
            if violation.order_id in final:
                order = requests.get(
                    f"{stack.api_url}/orders/{violation.order_id}", headers=workload.headers("admin"), timeout=TIMEOUT
                ).json()
                print(f"    history: {[(h['step'], h['status']) for h in order['history']]}")
                print(f"    payment: {order['payment']}")
        if violations or report.omitted or workload.problems or event_problems:
            print(f"  replay: make chaos ORDERS={args.orders} SEED={args.seed} PROFILE={args.profile}")
            return 1
        return 0
    finally:
        injector.stop()
        moto_events.execution_listeners.remove(watcher)
        moto_events.published_listeners.remove(bus)
        stack.stop()
        dynamodb.stop()
        moto_dynamodb.remove_client_transport()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The summary is printed and the stack and the DynamoDB process are stopped. An emulator thread
    # still inside a scheduled function (a worker thread, which interpreter exit would join) fails
    # its next DynamoDB request at once (moto_dynamodb's transport is removed) or within the bounded
    # greeting; the run's answer does not wait for that.
    os._exit(code)
