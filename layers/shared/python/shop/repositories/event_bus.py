"""The shop's EventBridge bus (EVENT_BUS_NAME): PutEvents, the only call the publishers make to it."""

from __future__ import annotations

import json

from botocore.exceptions import ClientError

from shop import aws
from shop.config import event_settings
from shop.errors import EventPublishFailed
from shop.models.events import OutgoingEvent


def longest_put_seconds() -> float:
    """The longest one ``put`` can take: every attempt waits out both of the events client's timeouts,
    and standard retry mode sleeps up to 2**(n-1) s after the n-th failed attempt."""
    backoff = sum(2 ** (attempt - 1) for attempt in range(1, aws.EVENTS_ATTEMPTS))
    return aws.EVENTS_ATTEMPTS * (aws.EVENTS_CONNECT_SECONDS + aws.EVENTS_READ_SECONDS) + backoff


def put(event: OutgoingEvent) -> None:
    """Put one event on the bus; raise EventPublishFailed unless EventBridge accepted it.

    One entry per call: the publisher reports each stream record's success on its own (a batch
    entry failing alone would otherwise need its own bookkeeping), and EventBridge bills by entry.
    """
    entry = {
        "EventBusName": event_settings().event_bus_name,
        "Source": event.source,
        "DetailType": event.detail_type,
        "Detail": json.dumps(event.detail.model_dump(mode="json")),
        "Resources": [],
    }
    try:
        response = aws.client("events").put_events(Entries=[entry])
    except ClientError as error:
        raise EventPublishFailed(f"PutEvents failed for {event.event_id}: {error}") from error
    if response.get("FailedEntryCount", 0):
        failed = response["Entries"][0]
        raise EventPublishFailed(
            f"EventBridge refused {event.event_id}: {failed.get('ErrorCode')} {failed.get('ErrorMessage')}"
        )
