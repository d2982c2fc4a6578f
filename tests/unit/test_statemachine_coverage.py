"""How the state machine coverage reads an execution history (tests/statemachine_coverage.py)."""

from __future__ import annotations

from typing import Any

from tests.statemachine_coverage import MACHINES, Record, Taken, definitions, edges_of, error_matches, report, universe

DEFINITION: dict[str, Any] = {
    "States": {
        "Step": {
            "Type": "Task",
            "Retry": [
                {"ErrorEquals": ["Transient", "Sandbox.Timedout"]},
                {"ErrorEquals": ["CircuitOpen"]},
                {"ErrorEquals": ["States.ALL"]},
            ],
            "Catch": [
                {"ErrorEquals": ["Declined"], "Next": "Declined"},
                {"ErrorEquals": ["States.ALL"], "Next": "Failed"},
            ],
            "Next": "Done",
        },
        "Declined": {"Type": "Pass", "Next": "Done"},
        "Failed": {"Type": "Pass", "Next": "Done"},
        "Done": {"Type": "Succeed"},
    }
}


def entered(state: str, kind: str = "Task") -> dict[str, Any]:
    return {"type": f"{kind}StateEntered", "stateEnteredEventDetails": {"name": state}}


def failed(error: str, kind: str = "TaskFailed") -> dict[str, Any]:
    return {"type": kind, "taskFailedEventDetails": {"error": error, "cause": "..."}}


SCHEDULED = {"type": "TaskScheduled", "taskScheduledEventDetails": {}}
EXITED = {"type": "TaskStateExited", "stateExitedEventDetails": {"name": "Step"}}


def test_a_failure_followed_by_the_same_task_scheduled_uses_the_first_matching_retrier() -> None:
    history = [
        entered("Step"),
        SCHEDULED,
        failed("Sandbox.Timedout"),
        SCHEDULED,
        failed("CircuitOpen"),
        SCHEDULED,
        failed("Unexpected"),
        SCHEDULED,
        {"type": "TaskSucceeded", "taskSucceededEventDetails": {}},
        EXITED,
        entered("Done", "Succeed"),
    ]

    taken = edges_of(DEFINITION, history)

    assert taken == Taken(states={"Step", "Done"}, catches=set(), retries={("Step", 0), ("Step", 1), ("Step", 2)})


def test_a_failure_followed_by_entering_a_state_takes_the_first_matching_catcher() -> None:
    declined = edges_of(
        DEFINITION, [entered("Step"), SCHEDULED, failed("Declined"), EXITED, entered("Declined", "Pass")]
    )
    anything = edges_of(
        DEFINITION, [entered("Step"), SCHEDULED, failed("Oops", "TaskTimedOut"), EXITED, entered("Failed")]
    )

    assert (declined.catches, declined.retries) == ({("Step", 0)}, set())
    assert (anything.catches, anything.retries) == ({("Step", 1)}, set())


def test_a_failure_that_ends_the_execution_takes_no_edge() -> None:
    history = [
        entered("Step"),
        SCHEDULED,
        failed("Oops"),
        {"type": "ExecutionFailed", "executionFailedEventDetails": {}},
    ]

    assert edges_of(DEFINITION, history) == Taken(states={"Step"})


def test_error_names_match_as_in_asl() -> None:
    assert error_matches(["States.ALL"], "Anything")
    assert error_matches(["A", "B"], "B")
    assert error_matches(["States.TaskFailed"], "Lambda.Unknown")
    assert not error_matches(["States.TaskFailed"], "States.Timeout")
    assert not error_matches(["A"], "AB")


def test_the_universe_is_every_state_catcher_and_retrier_of_both_machines() -> None:
    assert universe(DEFINITION) == Taken(
        states={"Step", "Declined", "Failed", "Done"},
        catches={("Step", 0), ("Step", 1)},
        retries={("Step", 0), ("Step", 1), ("Step", 2)},
    )
    assert set(definitions()) == set(MACHINES)
    checkout = universe(definitions()["CheckoutStateMachine"])
    assert "RefundCapturedOrder" in checkout.states and ("VoidPayment", 2) in checkout.retries


def test_the_report_counts_per_machine_and_names_what_is_missing() -> None:
    record = Record()
    record.machines["RefundStateMachine"] = universe(definitions()["RefundStateMachine"])

    lines, complete = report(record)

    assert not complete
    assert lines[0].startswith("checkout: states 0/")
    refund = universe(definitions()["RefundStateMachine"])
    assert lines[1] == (
        f"refund: states {len(refund.states)}/{len(refund.states)}, catch edges {len(refund.catches)}/"
        f"{len(refund.catches)}, retry edges {len(refund.retries)}/{len(refund.retries)}"
    )
    assert any(line.strip() == "checkout: state ReservationLost never entered" for line in lines[2:])
    assert all(line.strip().startswith("checkout:") for line in lines[2:])
