"""Every step, failure reason and error name the state machines use is declared in one place.

A typo in an ASL file (a step name in a Pass result, a reason, an ``ErrorEquals`` name) would
otherwise only show up in the slow saga tests, or on AWS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, get_args

import pytest

from infra.local.template import REPO_ROOT, Resolver, fill_substitutions, load_template
from shop import errors
from shop.models.orders import FailureReason, RecordProgress
from shop.saga_terms import Step

MACHINES = ("CheckoutStateMachine", "RefundStateMachine")


# Error names that AWS itself raises into a state machine (the project's own are the class names
# of shop.errors.ShopError's subclasses).
AWS_ERROR_NAMES: frozenset[str] = frozenset(
    {
        "States.ALL",
        "States.Timeout",
        "Sandbox.Timedout",
        "Lambda.Unknown",
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
        "Lambda.TooManyRequestsException",
    }
)


def _definition(logical_id: str) -> dict[str, Any]:
    template = load_template()
    properties = template["Resources"][logical_id]["Properties"]
    resolver = Resolver(refs={"RetryIntervalSeconds": "1", "RetryMaxDelaySeconds": "1"})
    for name in template["Resources"]:
        resolver.attributes[f"{name}.Arn"] = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
    text = fill_substitutions(
        (REPO_ROOT / properties["DefinitionUri"]).read_text(), resolver.resolve(properties["DefinitionSubstitutions"])
    )
    return json.loads(text)


def _shop_error_names() -> set[str]:
    found: set[str] = set()
    pending: list[type[errors.ShopError]] = [errors.ShopError]
    while pending:
        cls = pending.pop()
        found.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return found


def _states() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for machine in MACHINES:
        for name, state in _definition(machine)["States"].items():
            yield machine, name, state


def _step_names(state: dict[str, Any]) -> Iterator[str]:
    result = state.get("Result")
    if state["Type"] == "Pass" and isinstance(result, str):
        yield result  # a failed_step
    if isinstance(result, dict):
        if result.get("step"):
            yield result["step"]
        yield from result.get("compensations", [])
    payload = state.get("Parameters", {}).get("Payload", {})
    if isinstance(payload.get("step"), str):
        yield payload["step"]
    if isinstance(payload.get("failed_step"), str):
        yield payload["failed_step"]


def test_every_step_the_state_machines_name_is_a_declared_step() -> None:
    declared = {step.value for step in Step}
    used = {(machine, name, step) for machine, name, state in _states() for step in _step_names(state)}
    assert used, "the definitions name no steps: the test reads the wrong fields"
    unknown = sorted(entry for entry in used if entry[2] not in declared)
    assert not unknown, f"steps not in shop.saga_terms.Step: {unknown}"


def test_every_failure_reason_is_one_the_contract_knows() -> None:
    reasons = {
        state["Result"]["reason"]
        for _, _, state in _states()
        if isinstance(state.get("Result"), dict) and "reason" in state["Result"]
    }
    assert reasons and reasons <= set(get_args(FailureReason))


def test_every_error_name_retried_or_caught_exists() -> None:
    known = AWS_ERROR_NAMES | _shop_error_names()
    used = {
        (machine, name, error)
        for machine, name, state in _states()
        for rule in [*state.get("Retry", []), *state.get("Catch", [])]
        for error in rule["ErrorEquals"]
    }
    unknown = sorted(entry for entry in used if entry[2] not in known)
    assert not unknown, f"error names neither AWS's nor a class in shop.errors: {unknown}"
    fail_errors = {state["Error"] for _, _, state in _states() if state["Type"] == "Fail"}
    assert fail_errors  # Fail states name their own errors: the execution's error in EventBridge


@pytest.mark.parametrize("step", get_args(RecordProgress.model_fields["step"].annotation))
def test_the_progress_steps_are_declared_steps(step: str) -> None:
    assert step in {s.value for s in Step}
