"""The seeded chaos run that `make test` includes: 300 orders under the hostile profile.

`python -m infra.local.chaos` (what `make chaos` runs) in a process of its own: the whole local
stack, moto's DynamoDB in another process, 32 clients, faults at every seam (Lambda, DynamoDB
before and after the write, StartExecution outage windows, the payment provider), then faults
off, the sweepers and redrives, and the invariant checker over the books. Items no version of the
shop wrote are planted in four tables first: each must be reported, and none may stop a sweeper, a sale,
the orders' listing or the books check. The tables' streams are delivered to the event publishers
through the same faults, and what reached the bus and the e-mail outbox is audited against the
orders (infra/local/event_audit.py). The run must end with no violation, and every kind of
fault the profile names must have been injected at least once, so that a quiet run cannot pass
for a hostile one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from infra.local.chaos import UNREADABLE_ITEMS, default_workflow_type
from infra.local.faults import PROFILES
from tests.conftest import REPO_ROOT

ORDERS = 300
SEED = 2
PROFILE = "hostile"
# Fewer clients than `make chaos` (192): this run shares the machine with the other test tiers.
CLIENTS = 32


@pytest.mark.xdist_group("chaos")
def test_a_seeded_hostile_run_of_300_orders_ends_with_the_books_consistent() -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    environment["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'layers/shared/python'}"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.local.chaos",
            "--orders",
            str(ORDERS),
            "--seed",
            str(SEED),
            "--profile",
            PROFILE,
            "--concurrency",
            str(CLIENTS),
        ],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    report = run.stdout
    assert run.returncode == 0, f"chaos run failed:\n{report}\n{run.stderr[-4000:]}"
    assert re.search(r"^\s+violations:\s+0$", report, re.MULTILINE), report
    faults = json.loads(re.search(r"^\s+faults injected:\s+\d+\s+(\{.*\})$", report, re.MULTILINE).group(1))  # type: ignore[union-attr]
    missing = [kind for kind in PROFILES[PROFILE].kinds_for(default_workflow_type()) if faults.get(kind, 0) == 0]
    assert not missing, f"fault kinds never injected: {missing}\n{report}"
    # The items no version of the shop wrote, planted before the workload: each reported, none stopped anything.
    planted = len(UNREADABLE_ITEMS)
    assert re.search(rf"^\s+unreadable items:\s+{planted} planted, {planted} reported", report, re.MULTILINE), report
    # The tables' streams were delivered through the faults: the events were audited against the
    # orders (a failure there is a violation), every order announced at least its placement and its
    # end, and the planted order's record was set aside rather than lost or blocking the shard.
    events = re.search(
        r"^\s+events:\s+(\d+) order events published .*, (\d+) e-mails queued; (\d+) stream record", report, re.M
    )
    assert events is not None, report
    published, emails, set_aside = (int(group) for group in events.groups())
    # An order past a customer's purchase limit is refused at once (422): it places nothing.
    behaviour = json.loads(re.search(r"^\s+client behaviour:\s+(\{.*\})$", report, re.MULTILINE).group(1))  # type: ignore[union-attr]
    placed = ORDERS - behaviour.get("refused_past_purchase_limit", 0)
    assert published >= 2 * placed and emails >= placed and set_aside == 1, report
    finals = dict(re.findall(r"^\s{4}(COMPLETED|REFUNDED|CANCELLED [A-Z_]+)\s+(\d+)$", report, re.MULTILINE))
    assert sum(int(count) for count in finals.values()) == placed, report
    # The limited SKU was fought over: customers reached their limit, and every customer's purchase
    # counters were judged against their orders by the books check (a wrong one is a violation).
    limited = int(finals.get("CANCELLED PURCHASE_LIMIT_EXCEEDED", 0)) + behaviour.get("refused_past_purchase_limit", 0)
    assert limited > 0, report
    checked = json.loads(re.search(r"^\s+checked:\s+(\{.*\})$", report, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert checked["purchase_counters"] > 0, report
