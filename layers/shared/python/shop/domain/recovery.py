"""Recovery that does not depend on a saga's own last step.

Two mechanisms, both outside the state machines:

- ``settle_stopped_execution``: EventBridge delivers every "Step Functions Execution Status
  Change" of either saga that ends FAILED, TIMED_OUT or ABORTED. An order such an execution left
  in progress becomes NEEDS_ATTENTION with an open dead letter; a redrive that stopped reopens
  its dead letter, so the next redrive starts a new execution.
- ``resume_orphans``: a scheduled sweep of the orders still in progress that were placed more
  than ``ORPHAN_AFTER_SECONDS`` ago. An order whose saga was never started (StartExecution
  failed after the order was stored) gets it started, under the same execution name, so never
  twice; an order whose saga stopped without the event being handled is settled as above; one
  whose saga is still running (long retries) is left to it.

And one for the operators' redrives: ``reopen_stalled_redrives`` (run by the hourly reconciliation)
reopens the letter of a redrive that stopped without settling its order or flagging it again, which
an EXPRESS redrive's stop (it sends no status event) or a lost event would leave REDRIVING.

Both sweeps are idempotent: running them twice, or both on one order, leaves one dead letter.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from shop.config import recovery_settings, saga_settings
from shop.domain import order_saga
from shop.domain.orders import start_checkout
from shop.errors import OrderStateConflict, SagaClaimLost, TransientError
from shop.models.base import iso_now, zoned_instant
from shop.models.orders import (
    FIRST_EPOCH,
    SAGA_IN_PROGRESS,
    SETTLED,
    CheckoutRedriveInput,
    DeadLetter,
    ExecutionStatusChange,
    Failure,
    FlagOrder,
    Order,
    OrphanSweep,
    ResumePoint,
    SagaClaim,
    SettledExecution,
    StepError,
)
from shop.observability import dimensioned_metric, logger
from shop.repositories import dead_letters, sagas
from shop.repositories import orders as repository
from shop.repositories.sagas import ExecutionStatus

STOPPED = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})
# Most orders one sweep starts, settles or fails to look up (oldest first); the rest wait for the next
# run. Orders whose saga is running, that moved on, or that cannot be read do not count, so sagas still
# running their long retries (a capture waiting out an open breaker) cannot hide newer orphans. A large
# backlog can still outlast the function's 60 s: the sweep then stops early (SWEEP_MARGIN_SECONDS) and
# the next run goes on.
SWEEP_LIMIT = 1000
# Time kept in hand when the sweep stops early: one order's lookups and start, with retries.
SWEEP_MARGIN_SECONDS = 10.0
# The candidates are every key of OrdersInProgress past the bound (its Scan reads them all anyway);
# the sweep's own bounds are SWEEP_LIMIT and its time.
_EVERY_CANDIDATE = sys.maxsize

# What the sweep did with one order; the first four count towards SWEEP_LIMIT.
Resumed = Literal["started", "continued", "settled", "deferred", "running", "left"]


def _input_of(change: ExecutionStatusChange) -> dict[str, object]:
    try:
        document = json.loads(change.input or "{}")
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def settle_stopped_execution(change: ExecutionStatusChange) -> SettledExecution:
    """Make sure the order of a stopped execution is visible to operators and redrivable."""
    document = _input_of(change)
    order_id = document.get("order_id")
    if not isinstance(order_id, str) or change.status not in STOPPED:
        return SettledExecution(order_id=None, execution_name=change.name, action="not_an_order")
    order = repository.get(order_id)
    if order is None:
        return SettledExecution(order_id=order_id, execution_name=change.name, action="not_an_order")
    if order.status in SAGA_IN_PROGRESS and _held_by_another_run(change, document, order):
        # A later run (the refund saga the checkout or a redrive handed over to, the customer's refund)
        # owns the order and settles it, its letter included; if it stops, its own event or the sweeper
        # flags it. Flagging now, or reopening the redrive's letter, put an OPEN letter, and an
        # operator's Redrive, under a refund that was running (late or repeated events: the rule
        # retries a delivery for up to 24 hours; helpers' probes).
        return SettledExecution(order_id=order_id, execution_name=change.name, action="superseded")
    now = iso_now()
    reopened = dead_letters.reopen_redrive(
        order_id, execution_name=change.name, error=change.error or change.status, cause=change.cause, now=now
    )
    letter = dead_letters.get(order_id)
    if order.status in SETTLED or (order.status == "NEEDS_ATTENTION" and letter and letter.status == "OPEN"):
        action = "redrive_reopened" if reopened else "already_settled"
        return SettledExecution(order_id=order_id, execution_name=change.name, action=action)
    if _replaced_by_running_redrive(change, letter):
        # EventBridge delivers late (async invokes retry for minutes): the event of an execution a
        # redrive has since replaced. Flagging now would reopen the letter under the running redrive.
        return SettledExecution(order_id=order_id, execution_name=change.name, action="superseded")
    recorded_failure = document.get("failure")
    failure = Failure.model_validate(recorded_failure) if isinstance(recorded_failure, dict) else None
    if failure is None and letter is not None:
        failure = letter.failure  # a reason once known stays known: the redrive compensates with it
    is_refund = change.state_machine_arn == sagas.refund_state_machine_arn() or order.status == "REFUNDING"
    _dead_letter(
        order,
        resume="refund" if is_refund else "compensate",
        failure=failure,
        status=change.status,
        error=change.error,
        cause=change.cause,
        execution_name=change.name,
    )
    return SettledExecution(order_id=order_id, execution_name=change.name, action="dead_lettered")


def _replaced_by_running_redrive(change: ExecutionStatusChange, letter: DeadLetter | None) -> bool:
    """The execution started before the running redrive began (the refund saga a redrive starts
    comes after it, and is the redrive's own)."""
    if letter is None or letter.status != "REDRIVING" or change.name == letter.redrive_execution:
        return False
    if change.start_date is None or letter.redrive_started_at is None:
        return False
    began = zoned_instant(letter.redrive_started_at)
    if began is None:
        # Written behind the shop's back: nothing tells which run came first. The running redrive is
        # left alone (its own end settles the letter); before, every event for the order raised here.
        logger().error("a redriving letter's start time is no time", extra={"order_id": letter.order_id})
        return True
    return change.start_date < int(began.timestamp() * 1000)


def _held_by_another_run(change: ExecutionStatusChange, document: dict[str, object], order: Order) -> bool:
    """The order is claimed by another saga run (not the orphan sweeper's takeover, which claims only to
    flag) at the stopped execution's epoch or a later one. Only one execution claims an epoch: another
    holding the same epoch means the stopped one never owned the order (a second run of the same refund
    that failed at its claim); before, only a later epoch counted, and such a run's event flagged the
    running refund's order (a helper's mutation probe)."""
    epoch = document.get("epoch", FIRST_EPOCH)
    if not isinstance(epoch, int) or order.saga_claim is None or order.saga_epoch is None:
        return False
    if order.saga_claim.startswith(f"{ORPHAN_SWEEPER}:"):
        return False
    stopped = repository.claim_token(SagaClaim(execution=change.execution_arn, epoch=max(epoch, FIRST_EPOCH)))
    return order.saga_claim != stopped and order.saga_epoch >= epoch


def _dead_letter(
    order: Order,
    *,
    resume: ResumePoint,
    failure: Failure | None,
    status: str,
    error: str | None,
    cause: str | None,
    execution_name: str,
    claim: SagaClaim | None = None,
) -> None:
    """What the state machine's own flag step would have done: NEEDS_ATTENTION and a dead letter
    (fenced by ``claim`` when given: SagaClaimLost once another execution holds the order)."""
    order_saga.flag_for_attention(
        FlagOrder(
            order_id=order.order_id,
            claim=claim,
            execution_name=execution_name,
            resume=resume,
            failed_step=f"saga_{status.lower()}",
            error=StepError(Error=error or status, Cause=cause or ""),
            failure=failure,
        )
    )


def resume_orphans(now: datetime, *, seconds_left: Callable[[], float] | None = None) -> OrphanSweep:
    """Start or settle every order in progress placed more than ORPHAN_AFTER_SECONDS ago that has no running saga.

    ``seconds_left``: the invocation's remaining time. A backlog (an outage left thousands of orders
    without a saga) can take longer than the function may run: the sweep stops SWEEP_MARGIN_SECONDS
    before its timeout, never half-way through an order, and the next scheduled run goes on. It stops
    too once SWEEP_LIMIT orders needed it to act (a start, a settle, or a lookup or start that failed
    and waits for the next run); an order whose saga runs never counts, nor holds up the ones behind it.
    """
    cutoff = now - timedelta(seconds=recovery_settings().orphan_after_seconds)
    running = _running_saga_names()
    candidates = [
        order_id
        for order_id in repository.in_progress_since(_iso(cutoff), limit=_EVERY_CANDIDATE)
        if not _listed_running(order_id, running)
    ]
    done: dict[Resumed, list[str]] = {"started": [], "continued": [], "settled": [], "deferred": []}
    examined = acted = 0
    for order_id in candidates:
        if acted >= SWEEP_LIMIT or _out_of_time(seconds_left):
            break
        examined += 1
        outcome = _resume_or_defer(order_id, now)
        if outcome in done:
            done[outcome].append(order_id)
            acted += 1
    sweep = OrphanSweep(
        examined=examined,
        started=done["started"] + done["continued"],
        settled=done["settled"],
        stopped_early=examined < len(candidates),
    )
    if sweep.stopped_early:
        logger().warning(
            "orphan sweep stopped at its bound or before its timeout; the next run goes on",
            extra={"examined": examined, "candidates": len(candidates)},
        )
    # Sagas never started; an Express continuation counts as ExpressSagasContinued alone (it was both).
    # Printed at once (``dimensioned_metric``): where invocations share a process (the local emulator, the
    # service tests), the sagas just started may flush the shared buffer under their own function's name.
    if done["started"]:
        dimensioned_metric("OrphanedSagasStarted", MetricUnit.Count, len(done["started"]))
    if done["deferred"]:
        dimensioned_metric("OrphanChecksDeferred", MetricUnit.Count, len(done["deferred"]))
    return sweep


def _standard_status(order: Order, machine: str, name: str) -> ExecutionStatus | None:
    """The status of the STANDARD run ``name`` that holds the order, RUNNING while a run about to take
    the order over runs (it has not claimed it yet): an operator's redrive its letter names, or the
    refund continuation of the next epoch. The sweep's listing sets those aside as well; this is for
    a sweep whose listing failed, or a run started after it."""
    status = sagas.status(machine, name)
    if status == "RUNNING":
        return status
    for other_machine, other in _runs_about_to_take_over(order):
        if sagas.status(other_machine, other) == "RUNNING":
            return "RUNNING"
    return status


def _runs_about_to_take_over(order: Order) -> list[tuple[str, str]]:
    runs: list[tuple[str, str]] = []
    if order.status == "REFUNDING":
        base = sagas.refund_execution_name(order.order_id)
        runs.append(
            (sagas.refund_state_machine_arn(), sagas.continuation_execution_name(base, order_saga.next_epoch(order)))
        )
    letter = dead_letters.get(order.order_id)
    if letter is not None and letter.status == "REDRIVING" and letter.redrive_execution:
        redriven = sagas.refund_state_machine_arn() if letter.resume == "refund" else sagas.checkout_state_machine_arn()
        runs.append((redriven, letter.redrive_execution))
    return runs


def _standard_run_name(order: Order, machine: str, name: str) -> str:
    """The run of the saga that holds the order: ``name``, or its continuation at the order's epoch
    when the order's claim is that run's (a STANDARD execution's id is its ARN)."""
    if order.saga_claim is None or order.saga_epoch is None:
        return name
    continuation = sagas.continuation_execution_name(name, order.saga_epoch)
    its_claim = SagaClaim(execution=sagas.execution_arn(machine, continuation), epoch=order.saga_epoch)
    return continuation if repository.claim_token(its_claim) == order.saga_claim else name


def _out_of_time(seconds_left: Callable[[], float] | None) -> bool:
    return seconds_left is not None and seconds_left() < SWEEP_MARGIN_SECONDS


def _running_saga_names() -> frozenset[str] | None:
    """Names of the sagas' executions running now, or None when they cannot be known.

    One paginated ListExecutions per state machine and sweep, rather than a DescribeExecution per
    order (about 25 a second), sets the running sagas aside before the sweep's bound applies. EXPRESS
    executions cannot be listed (each order's claim says, ``_express_status``); a listing that failed
    leaves each order's execution to be described, as if none were known.
    """
    if saga_settings().workflow_type == "EXPRESS":
        return None
    machines = (sagas.checkout_state_machine_arn(), sagas.refund_state_machine_arn())
    try:
        names = {name for machine in machines for name in sagas.running(machine)}
        # A running continuation or redrive runs its saga (``refund-<id>-continue-<epoch>`` is
        # refund-<id>'s, ``<id>-redrive-<n>`` the checkout's).
        return frozenset(names | {base for base in map(sagas.saga_of, names) if base is not None})
    except TransientError as error:
        logger().warning("could not list the running sagas; each order's is described", extra={"error": str(error)})
        return None


def _listed_running(order_id: str, running: frozenset[str] | None) -> bool:
    # Either saga: a REFUNDING order's checkout may still be handing it over to its refund. Whichever
    # runs moves the order on, and a sweep after it ends judges the order.
    if running is None:
        return False
    return sagas.checkout_execution_name(order_id) in running or sagas.refund_execution_name(order_id) in running


def _resume_or_defer(order_id: str, now: datetime) -> Resumed:
    try:
        return _resume(order_id, now)
    except OrderStateConflict as error:
        # An order no saga can run (one without its payment method, edited behind the shop's back):
        # an operator's; it never holds up the orders behind it.
        logger().error(
            "an order in progress cannot be resumed; left for an operator",
            extra={"order_id": order_id, "detail": str(error)},
        )
        return "left"
    except TransientError as error:
        # Throttled or unavailable (a DescribeExecution, a StartExecution, the orders table): this
        # order waits for the next sweep; the orders behind it do not.
        logger().warning(
            "could not look up or resume an order in progress; left for the next sweep",
            extra={"order_id": order_id, "error": type(error).__name__, "detail": str(error)},
        )
        return "deferred"


def _resume(order_id: str, now: datetime) -> Resumed:
    """Start the order's saga if it never started; dead-letter the order if its saga ended without settling it."""
    order = _order_in_progress(order_id)
    if order is None:
        return "left"
    refund = order.status == "REFUNDING"
    machine = sagas.refund_state_machine_arn() if refund else sagas.checkout_state_machine_arn()
    name = sagas.refund_execution_name(order_id) if refund else sagas.checkout_execution_name(order_id)
    if saga_settings().workflow_type == "EXPRESS":
        status = _express_status(order, now, refund=refund, machine=machine)
    else:
        name = _standard_run_name(order, machine, name)
        status = _standard_status(order, machine, name)
    if status == "RUNNING":
        return "running"
    if _moved_since(order):
        # The status is newer than the order it would be judged against: the saga moved the order on
        # meanwhile (its completion became a refund hand-over, and the checkout SUCCEEDED). The next
        # sweep judges the order as it is then.
        logger().info(
            "order moved on while the sweep looked it up; left for the next sweep", extra={"order_id": order_id}
        )
        return "left"
    if status is None:
        if refund:
            order_saga.start_refund_saga(order)
        else:
            start_checkout(order)
        logger().warning("orphaned order: its saga was never started; started it", extra={"order_id": order_id})
        return "started"
    if status not in STOPPED and status != "SUCCEEDED":
        return "left"
    if saga_settings().workflow_type == "EXPRESS" and _within_continuation(order, now, refund=refund):
        _continue_express(order, refund=refund)
        return "continued"
    # Stopped without its event being handled, or ended without settling the order. The sweep takes
    # the order over first, as a redrive would: a run started meanwhile (a continuation an earlier
    # sweep started, a refund hand-over) that claims the same epoch first keeps it, and one that
    # claims later stops at its claim instead of running on against a flagged order.
    try:
        claim = SagaClaim(execution=sweeper_execution(machine, name), epoch=order_saga.next_epoch(order))
        if repository.claim(order_id, claim).status not in SAGA_IN_PROGRESS:
            # Settled since it was read (a late step of its saga finished it): nothing needs attention.
            logger().info("order settled while the sweep looked at it", extra={"order_id": order_id})
            return "left"
        _dead_letter(
            order,
            resume="refund" if refund else "compensate",
            failure=None,
            status=status,
            error=None,
            cause=f"the {name} execution is {status} but the order was still {order.status}",
            execution_name=name,
            claim=claim,
        )
    except SagaClaimLost:
        logger().info("a run of the order's saga took it over while the sweep judged it", extra={"order_id": order_id})
        return "left"
    except OrderStateConflict:
        # Settled since it was read (a late step of its saga, delivered twice, finished it): nothing
        # needs attention, and the rest of the sweep goes on.
        logger().info("order settled while the sweep looked at it", extra={"order_id": order_id})
        return "left"
    return "settled"


# The claim's "machine" when the orphan sweeper takes an order over to dead-letter it.
ORPHAN_SWEEPER = "orphan-sweeper"


def sweeper_execution(machine: str, name: str) -> str:
    """The execution id the orphan sweeper's takeover claims under: the saga's execution ARN with the
    machine's name replaced, so the claim says no saga holds the order (``sagas.claimed_by``)."""
    fields = sagas.execution_arn(machine, name).split(":")
    fields[6] = ORPHAN_SWEEPER
    return ":".join(fields)


def _order_in_progress(order_id: str) -> Order | None:
    try:
        order = repository.get(order_id)
    except ValidationError as error:
        # Written behind the shop's back, or by a version this one cannot read: the reconciliation
        # reports it for an operator; it never holds up the orders behind it.
        logger().error(
            "an order item in progress is not an Order; left for an operator",
            extra={"order_id": order_id, "errors": error.error_count()},
        )
        return None
    return order if order is not None and order.status in SAGA_IN_PROGRESS else None


def _moved_since(judged: Order) -> bool:
    current = _order_in_progress(judged.order_id)
    return current is None or current.version != judged.version


# An Express execution runs at most 5 minutes; past that and a margin for a step's last write, none
# of an order's executions can still be running.
EXPRESS_LIMIT_SECONDS = 300
EXPRESS_SETTLE_MARGIN_SECONDS = 60


def _within_continuation(order: Order, now: datetime, *, refund: bool) -> bool:
    """Whether an Express saga that stopped unsettled is continued (else dead-lettered): within
    ExpressContinueForSeconds (default an hour) of when it began. A capture, void or refund waiting out
    an open breaker outlives one 5-minute run whenever the provider is down for minutes, while a
    Standard saga's retries wait up to 99 attempts (about 48 minutes at most); a saga still unsettled
    after the window is an operator's."""
    window = recovery_settings().express_continue_for_seconds
    return (now - _saga_began_at(order, refund=refund)).total_seconds() < window


def _saga_began_at(order: Order, *, refund: bool) -> datetime:
    """The checkout's: the placement. The refund's: when the order became REFUNDING, its last history
    entry (the refund saga's steps record theirs when it settles)."""
    began = order.history[-1].at if refund and order.history else order.created_at
    return _stored_instant(order, began)


def _stored_instant(order: Order, stamp: str) -> datetime:
    """One of the order's stored times; OrderStateConflict (the sweep leaves the order for an operator, and
    goes on) for one with no zone or no time at all, written behind the shop's back. Before, it raised
    TypeError or ValueError, which stopped the sweep at the same order every run: no orphan behind it was
    ever started (a helper's clock probe)."""
    moment = zoned_instant(stamp)
    if moment is None:
        raise OrderStateConflict(f"order {order.order_id} has a stored time that is no time with its zone: {stamp!r}")
    return moment


def _continue_express(order: Order, *, refund: bool) -> None:
    """A run that takes the order over at the next epoch and goes on from the stopped run: every step
    is idempotent (what the stopped run did is found done, what it was doing is done once), and a
    customer's cancel asked meanwhile is honoured at the next checkpoint.

    A checkout that stopped while compensating (its first compensation recorded why on the order)
    goes on compensating, as a redrive does: it asks the provider first, then voids, releases and
    cancels for that reason. Before, it checked out again: the order ended with another reason than
    the one the customer's failure had, a payment never authorized in its history, and a card hold
    made and voided for an order already compensated (a helper's probe)."""
    epoch = order_saga.next_epoch(order)
    if refund:
        order_saga.continue_refund_saga(order)
    else:
        name = sagas.continuation_execution_name(sagas.checkout_execution_name(order.order_id), epoch)
        if order.compensating is not None:
            redrive = CheckoutRedriveInput(
                mode="compensate", order_id=order.order_id, failure=order.compensating, epoch=epoch
            )
            sagas.start(sagas.checkout_state_machine_arn(), name=name, payload=redrive)
        else:
            start_checkout(order, epoch=epoch, name=name)
    dimensioned_metric("ExpressSagasContinued", MetricUnit.Count, 1)  # at once, as the sweep's counts
    logger().warning(
        "an Express saga stopped before settling its order (its time limit); continued it",
        extra={"order_id": order.order_id, "status": order.status, "epoch": epoch},
    )


def _express_status(order: Order, now: datetime, *, refund: bool, machine: str) -> ExecutionStatus | None:
    """What the sweeper can know of an Express saga, which cannot be described by name.

    The order's claim says whether an execution of the saga ever ran its first step: never
    claimed (for a refund: not claimed by the refund machine) means never started, unless the
    order changed within ORPHAN_AFTER_SECONDS and a start may still be on its way to its claim;
    starting one that did start is harmless (the claim stops the duplicate). Claimed and not
    settled once no execution can still run means it stopped without settling (as TIMED_OUT).
    """
    quiet_seconds = (now - _stored_instant(order, order.updated_at)).total_seconds()
    all_over = quiet_seconds > EXPRESS_LIMIT_SECONDS + EXPRESS_SETTLE_MARGIN_SECONDS
    claimed = order.saga_claim is not None and (not refund or sagas.claimed_by(order.saga_claim, machine))
    if not claimed:
        return None if quiet_seconds > recovery_settings().orphan_after_seconds else "RUNNING"
    return "TIMED_OUT" if all_over else "RUNNING"


def reopen_stalled_redrives(letters: Iterable[DeadLetter], now: datetime) -> list[DeadLetter]:
    """Reopen the letters whose redrive stopped without settling its order or flagging it again.

    A redrive's letter stays REDRIVING until its run does one or the other. A run that stopped first
    (its flag step failed past its retries, it timed out, someone stopped it) reopens its letter
    through its status event on STANDARD; EXPRESS sends no such event, and an event can be lost. An
    order still in progress is the orphan sweeper's, and a run that may still be going is left to
    it: on STANDARD, one Step Functions does not say has stopped; on EXPRESS, one younger than the
    longest an Express execution can run. The letters reopened.
    """
    reopened: list[DeadLetter] = []
    for letter in letters:
        name = letter.redrive_execution
        if letter.status != "REDRIVING" or name is None or letter.redrive_started_at is None:
            continue
        order = repository.get(letter.order_id)
        if order is None or order.status in SAGA_IN_PROGRESS:
            continue
        started_at = zoned_instant(letter.redrive_started_at)
        if started_at is None:
            # Written behind the shop's back: nothing says how old the redrive is. The letter stays as it
            # is, listed for an operator, and the books check goes on with the others.
            logger().error(
                "a redriving letter's start time is no time; left for an operator", extra={"order_id": letter.order_id}
            )
            continue
        status = _redrive_status(letter, name, started_at, now)
        if status == "RUNNING":
            continue
        cause = f"the redrive {name} is {status} but neither settled the order ({order.status}) nor flagged it"
        if dead_letters.reopen_redrive(
            letter.order_id, execution_name=name, error="RedriveStopped", cause=cause, now=iso_now()
        ):
            logger().warning(
                "a redrive stopped without settling its order; its letter is open again",
                extra={"order_id": letter.order_id, "execution": name, "status": status},
            )
            reopened.append(letter)
    return reopened


def _redrive_status(letter: DeadLetter, name: str, started_at: datetime, now: datetime) -> str:
    age = (now - started_at).total_seconds()
    if saga_settings().workflow_type == "EXPRESS":
        return "TIMED_OUT" if age > EXPRESS_LIMIT_SECONDS + EXPRESS_SETTLE_MARGIN_SECONDS else "RUNNING"
    refund = letter.resume == "refund"
    machine = sagas.refund_state_machine_arn() if refund else sagas.checkout_state_machine_arn()
    # Never started (its StartExecution failed) counts once a start can no longer be on its way.
    never_started = "FAILED" if age > recovery_settings().orphan_after_seconds else "RUNNING"
    return sagas.status(machine, name) or never_started


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
