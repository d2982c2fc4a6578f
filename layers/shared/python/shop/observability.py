"""The Powertools logger, tracer and metrics every entry point shares.

Powertools reads its configuration (service name, log level, namespace) from the
environment when these objects are created, so they are built on first use, not at import.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer


@lru_cache(maxsize=1)
def logger() -> Logger:
    return Logger()


@lru_cache(maxsize=1)
def tracer() -> Tracer:
    return Tracer()


@lru_cache(maxsize=1)
def metrics() -> Metrics:
    return Metrics()


def instrumented(func: Callable[[dict[str, Any], Any], Any]) -> Callable[[dict[str, Any], Any], Any]:
    """Wrap a Lambda entry point with the Powertools logger, tracer and metrics.

    The wrapping happens on the first invocation (cold start), not at import, so importing a
    handler reads no environment. Every log line carries ``order_id`` and the execution name
    when the event has them (saga steps get both from the state machine).
    """
    wrapped: list[Callable[[dict[str, Any], Any], Any]] = []
    lock = threading.Lock()

    def with_correlation_keys(event: dict[str, Any], context: Any) -> Any:
        if isinstance(event, dict):
            keys = {k: event[k] for k in ("order_id", "execution_name") if event.get(k)}
            if keys:
                logger().append_keys(**keys)
        return func(event, context)

    @functools.wraps(func)
    def handler(event: dict[str, Any], context: Any) -> Any:
        if not wrapped:
            with lock:
                if not wrapped:
                    inner = metrics().log_metrics(capture_cold_start_metric=True)(with_correlation_keys)
                    inner = tracer().capture_lambda_handler(inner)
                    wrapped.append(logger().inject_lambda_context(clear_state=True)(inner))
        return wrapped[0](event, context)

    return handler
