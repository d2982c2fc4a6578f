"""ConsumerFailuresQueue (SQS), where the events the consumers failed on wait, and the one call that
hands an event back to its function (Lambda Invoke, synchronous, so the redriver learns the outcome).

Two writers fill the queue: Lambda's on-failure destination, whose message is an invocation record
(``requestContext.functionArn``, ``requestPayload``: the event), and EventBridge's dead-letter
delivery, whose message is the event itself, the target in its ``TARGET_ARN`` attribute.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from shop import aws
from shop.config import event_settings

# SQS hands out at most 10 messages per receive.
RECEIVE_BATCH = 10


class _FailedFunction(BaseModel):
    function_arn: str = Field(alias="functionArn", min_length=1)


class _LambdaDestinationRecord(BaseModel):
    """Lambda's on-failure destination record: the function and the event it failed on."""

    request_context: _FailedFunction = Field(alias="requestContext")
    request_payload: dict[str, Any] = Field(alias="requestPayload")


_EVENT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


@dataclass(frozen=True)
class WaitingMessage:
    body: str
    attributes: dict[str, str]
    receipt_handle: str

    def failed_invocation(self) -> tuple[str, dict[str, Any]] | None:
        """The function and the event this message names; None when it names neither. Lambda's
        destination record names both; EventBridge's dead letter is the event itself, its target in
        the message's TARGET_ARN attribute."""
        try:
            record = _LambdaDestinationRecord.model_validate_json(self.body)
        except ValidationError:
            pass
        else:
            return record.request_context.function_arn, record.request_payload
        target = self.attributes.get("TARGET_ARN")
        try:
            event = _EVENT.validate_json(self.body)
        except ValidationError:
            return None
        return (target, event) if target else None


@dataclass(frozen=True)
class Invocation:
    """``error`` is None when the function returned; else what failed (its error type, or the call's)."""

    error: str | None


def receive() -> list[WaitingMessage]:
    """Up to ``RECEIVE_BATCH`` visible messages; each is hidden for the queue's visibility timeout."""
    response = aws.client("sqs").receive_message(
        QueueUrl=event_settings().consumer_failures_queue_url,
        MaxNumberOfMessages=RECEIVE_BATCH,
        MessageAttributeNames=["All"],
        WaitTimeSeconds=0,
    )
    return [
        WaitingMessage(
            body=message["Body"],
            attributes={
                name: str(value.get("StringValue", ""))
                for name, value in (message.get("MessageAttributes") or {}).items()
            },
            receipt_handle=message["ReceiptHandle"],
        )
        for message in response.get("Messages", [])
    ]


def counts() -> tuple[int, int]:
    """SQS's approximate counts: (visible messages, messages not visible)."""
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=event_settings().consumer_failures_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def delete(message: WaitingMessage) -> None:
    aws.client("sqs").delete_message(
        QueueUrl=event_settings().consumer_failures_queue_url, ReceiptHandle=message.receipt_handle
    )


def invoke(function: str, payload: Mapping[str, Any]) -> Invocation:
    """Run ``function`` (a name or ARN) on ``payload`` and wait for it."""
    try:
        response = aws.client("lambda").invoke(FunctionName=function, Payload=json.dumps(payload).encode())
    except (ClientError, BotoCoreError) as error:  # throttled, unreachable: the message waits for the next run
        return Invocation(error=type(error).__name__)
    if response.get("FunctionError"):
        answer = response["Payload"].read()
        try:
            error_type = json.loads(answer or b"{}").get("errorType")
        except ValueError:
            error_type = None
        return Invocation(error=str(error_type or response["FunctionError"]))
    return Invocation(error=None)
