"""Starting the checkout and refund sagas (Step Functions executions, STANDARD or EXPRESS).

Every start passes a name derived from the order, so a repeated start (a retried request, a
duplicate delivery, the saga and a cancel request racing) of a STANDARD workflow can never run a
second saga: Step Functions answers ExecutionAlreadyExists, or the running execution for the same
name and input. An EXPRESS start is at-least-once and names are not unique: a second execution can
run, and its first step's claim (``shop.domain.order_saga.claim_order``) stops it without effect.
"""

from __future__ import annotations

import json

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from shop import aws
from shop.config import saga_settings
from shop.errors import SagaNotStarted, TransientError

ExecutionStatus = str  # RUNNING | SUCCEEDED | FAILED | TIMED_OUT | ABORTED | PENDING_REDRIVE


def checkout_execution_name(order_id: str) -> str:
    return order_id


def refund_execution_name(order_id: str) -> str:
    return f"refund-{order_id}"


_REDRIVE = "-redrive-"


def redrive_execution_name(base_name: str, redrive_number: int) -> str:
    return f"{base_name}{_REDRIVE}{redrive_number}"


_CONTINUE = "-continue-"


def continuation_execution_name(base_name: str, epoch: int) -> str:
    """A run of a saga that goes on, at a later epoch, from a run that stopped (an Express run the
    orphan sweeper continues) or lost the order before its first step (a refund on STANDARD)."""
    return f"{base_name}{_CONTINUE}{epoch}"


def saga_of(name: str) -> str | None:
    """The saga run a continuation's or a redrive's run goes on from (the ``base_name`` of
    ``continuation_execution_name`` or ``redrive_execution_name``); None for any other name."""
    for suffix in (_CONTINUE, _REDRIVE):
        base, separator, number = name.rpartition(suffix)
        if separator and number.isdigit():
            return base
    return None


def _arn(name: str, value: str | None) -> str:
    if not value:
        raise RuntimeError(f"{name} is not configured for this function (infra/template.yaml)")
    return value


def checkout_state_machine_arn() -> str:
    return _arn("CHECKOUT_STATE_MACHINE_ARN", saga_settings().checkout_state_machine_arn)


def refund_state_machine_arn() -> str:
    return _arn("REFUND_STATE_MACHINE_ARN", saga_settings().refund_state_machine_arn)


def start(state_machine_arn: str, *, name: str, payload: BaseModel) -> bool:
    """Start the named execution; False when one with that name exists already (nothing started).

    Any other failure (throttled, a service error, no connection) is ``SagaNotStarted``: nothing
    ran, and starting again with the same name is always safe.
    """
    try:
        aws.stepfunctions().start_execution(
            stateMachineArn=state_machine_arn,
            name=name,
            input=json.dumps(payload.model_dump(mode="json"), sort_keys=True),
        )
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "ExecutionAlreadyExists":
            return False
        raise SagaNotStarted(f"Step Functions did not start {name} ({code}); retry") from error
    except BotoCoreError as error:
        raise SagaNotStarted(f"Step Functions did not start {name} ({type(error).__name__}); retry") from error
    return True


def claimed_by(stored_claim: str, state_machine_arn: str) -> bool:
    """Whether an order's stored claim (``<machine name>:<digest>``, see
    ``shop.repositories.orders.claim_token``) is held by an execution of that state machine."""
    return stored_claim.rsplit(":", 1)[0] == state_machine_arn.split(":")[-1]


def execution_arn(state_machine_arn: str, name: str) -> str:
    return state_machine_arn.replace(":stateMachine:", ":execution:", 1) + f":{name}"


def status(state_machine_arn: str, name: str) -> ExecutionStatus | None:
    """The named execution's status; None if it was never started."""
    client = aws.stepfunctions()
    try:
        described = client.describe_execution(executionArn=execution_arn(state_machine_arn, name))
    except ClientError as error:
        if error.response.get("Error", {}).get("Code", "") == "ExecutionDoesNotExist":
            return None
        raise SagaNotStarted(f"Step Functions could not describe {name}; retry") from error
    except BotoCoreError as error:
        raise SagaNotStarted(f"Step Functions could not describe {name} ({type(error).__name__}); retry") from error
    return str(described["status"])


# ListExecutions' largest page: a few calls list thousands of running executions (its quota is low).
_LIST_PAGE_SIZE = 1000


def running(state_machine_arn: str) -> list[str]:
    """Names of the machine's executions still RUNNING (every page). STANDARD only: Step Functions
    does not list EXPRESS executions."""
    pages = (
        aws.stepfunctions()
        .get_paginator("list_executions")
        .paginate(
            stateMachineArn=state_machine_arn,
            statusFilter="RUNNING",
            PaginationConfig={"PageSize": _LIST_PAGE_SIZE},
        )
    )
    try:
        return [str(execution["name"]) for page in pages for execution in page.get("executions", [])]
    except (ClientError, BotoCoreError) as error:
        # Throttled, unavailable, or a page token refused (InvalidToken): the caller decides.
        raise TransientError(f"Step Functions could not list the running executions of {state_machine_arn}") from error
