"""The saga steps stay callable by executions started before a deploy: every payload shape a definition
has sent (statemachines/step_payloads.json) is one the step's input model accepts, and every field a
definition reads of an answer is one the step's output model always holds (infra.step_contracts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from infra import step_contracts
from shop.models.orders import ClaimOrder, SagaClaim

KEPT = step_contracts.kept()
CALLS = step_contracts.step_calls()


def test_every_current_call_shape_is_kept() -> None:
    assert step_contracts.with_current(KEPT) == KEPT, (
        "a state machine sends a payload, or reads an answer, the file does not keep: run make schemas"
    )
    assert step_contracts.main(["--check"]) == 0


def test_every_function_the_state_machines_call_is_kept_and_nothing_else() -> None:
    assert set(KEPT) == {call.function for call in CALLS}


@pytest.mark.parametrize(
    ("function", "entry"), [(function, entry) for function, entries in KEPT.items() for entry in entries]
)
def test_each_step_accepts_every_payload_kept_for_it(function: str, entry: dict[str, Any]) -> None:
    model = step_contracts.step_models(function).input
    missing = step_contracts.missing_fields(model, entry["payload"])
    assert not missing, (
        f"{function}'s {model.__name__} requires {missing}, which an execution started before this change does "
        "not send: give each a default"
    )


@pytest.mark.parametrize(
    ("function", "entry"), [(function, entry) for function, entries in KEPT.items() for entry in entries]
)
def test_each_answer_holds_every_field_a_kept_definition_reads(function: str, entry: dict[str, Any]) -> None:
    model = step_contracts.step_models(function).output
    assert not step_contracts.unanswered_reads(model, tuple(entry["reads"]))


def test_the_answers_read_are_the_claim_the_reconciliation_and_the_completion() -> None:
    """What the definitions read of answers, so the check above checks something."""
    reads = {(call.function, call.reads) for call in CALLS if call.reads}
    assert reads == {
        ("ClaimOrderFunction", ("epoch", "execution")),
        ("ReconcilePaymentFunction", ("captured",)),
        ("CompleteOrderFunction", ("outcome",)),
    }
    assert step_contracts.step_models("ClaimOrderFunction").output is SagaClaim


class _ClaimWithNewField(ClaimOrder):
    reason: str


class _NestedClaim(BaseModel):
    execution: str
    epoch: int
    holder: str


class _ClaimWithNewNestedField(BaseModel):
    order_id: str
    claim: _NestedClaim


def test_a_newly_required_field_is_one_a_kept_payload_lacks_at_any_depth() -> None:
    [claim_payload, *_] = [entry["payload"] for entry in KEPT["ClaimOrderFunction"]]
    assert step_contracts.missing_fields(ClaimOrder, claim_payload) == []
    assert step_contracts.missing_fields(_ClaimWithNewField, claim_payload) == ["reason"]
    assert step_contracts.missing_fields(_ClaimWithNewNestedField, claim_payload) == ["claim.holder"]


def test_a_field_read_that_the_answer_dropped_is_found() -> None:
    class Shrunk(BaseModel):
        epoch: int

    assert step_contracts.unanswered_reads(Shrunk, ("epoch", "execution")) == ["execution"]
    assert step_contracts.unanswered_reads(None, ("captured",)) == ["captured"]


def test_a_changed_shape_is_added_beside_the_one_kept_never_in_its_place() -> None:
    older = {"payload": {"order_id": None, "execution_name": None}, "reads": ["epoch", "execution"]}
    merged = step_contracts.with_current({"ClaimOrderFunction": [older]})
    assert merged["ClaimOrderFunction"][0] == older
    assert len(merged["ClaimOrderFunction"]) == 2
    assert merged == step_contracts.with_current(merged)


def test_a_task_that_keeps_its_whole_answer_is_refused() -> None:
    with pytest.raises(ValueError, match="without a ResultSelector"):
        step_contracts._reads("Keep", {"Type": "Task", "ResultPath": "$.everything"})
    with pytest.raises(ValueError, match="without a ResultSelector"):
        step_contracts._reads("Replace", {"Type": "Task"})  # no ResultPath: the answer replaces the state
    assert step_contracts._reads("Drop", {"Type": "Task", "ResultPath": None}) == ()


def test_a_handler_that_does_not_parse_its_event_with_a_model_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "app.py").write_text("def handler(event, context):\n    return event\n")
    monkeypatch.setattr(
        step_contracts,
        "function_properties",
        lambda template, function: {"CodeUri": tmp_path, "Handler": "app.handler"},
    )
    with pytest.raises(ValueError, match="does not parse its event with parse_event"):
        step_contracts.step_models("UnparsedEventFunction")
