"""The events the consumers failed on, handed back to them (RedriveConsumerFailuresFunction's schedule).

EventBridge invokes a consumer asynchronously: when the function fails, Lambda retries it twice and
then writes the invocation to the on-failure destination, ConsumerFailuresQueue, instead of dropping
the event; an event EventBridge could not deliver at all lands there too. Every quarter of an hour
each waiting event is handed back to its function and waited for: one that succeeds is deleted, one
that fails again stays (hidden for the visibility timeout, then read by the next run) until the queue's
retention (14 days) ends. The consumers are idempotent on the event (its ``event_id``, or the
execution for the saga settler), so handing an event back that was in fact done changes nothing.
"""

from __future__ import annotations

from shop.models.events import RedriveResult
from shop.observability import logger
from shop.repositories import consumer_failures

# A run hands back at most this many events (the function's timeout bounds the rest; the next run goes on).
MAX_PER_RUN = 200


def redrive() -> RedriveResult:
    redelivered = still_failing = unrecognised = 0
    while redelivered + still_failing + unrecognised < MAX_PER_RUN:
        waiting = consumer_failures.receive()
        if not waiting:
            break
        for message in waiting:
            invocation = message.failed_invocation()
            if invocation is None:
                unrecognised += 1  # kept for an operator to read; it alarms like any other
                logger().error("a message in the consumer failures queue names no function and event")
                continue
            function, event = invocation
            outcome = consumer_failures.invoke(function, event)
            if outcome.error is None:
                consumer_failures.delete(message)
                redelivered += 1
            else:
                still_failing += 1
                logger().warning(
                    "a consumer failed again on a redriven event", extra={"function": function, "error": outcome.error}
                )
    return RedriveResult(redelivered=redelivered, still_failing=still_failing, unrecognised=unrecognised)
