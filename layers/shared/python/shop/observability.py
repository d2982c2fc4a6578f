"""The Powertools logger, tracer and metrics every entry point shares.

Powertools reads its configuration (service name, log level, namespace) from the
environment when these objects are created, so they are built on first use, not at import.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.lambda_context import build_lambda_context_model
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from shop.errors import ShopError


@lru_cache(maxsize=1)
def logger() -> Logger:
    return Logger()


@lru_cache(maxsize=1)
def tracer() -> Tracer:
    # `instrumented` logs each failure once, at the level it deserves; Powertools' tracer would
    # also log every expected business error (a declined card) as an exception with a trace.
    logging.getLogger("aws_lambda_powertools.tracing.tracer").setLevel(logging.CRITICAL)
    return Tracer()


# Powertools keeps one metrics buffer per process. On Lambda one invocation runs at a time; a host that
# runs several at once in threads (the local emulator, the service tests) flushed it in one invocation
# while another added to it or flushed it too: "Must contain at least one metric" failed a saga step.
_METRICS_LOCK = threading.RLock()


def _under_metrics_lock(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _METRICS_LOCK:
            return method(*args, **kwargs)

    return locked


@lru_cache(maxsize=1)
def metrics() -> Metrics:
    # A step that records nothing on some path (a no-op void, an empty sweep) is normal.
    warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)
    shared = Metrics()
    # log_metrics and Metrics' own methods call these on the provider.
    for name in ("add_metric", "flush_metrics"):
        setattr(shared.provider, name, _under_metrics_lock(getattr(shared.provider, name)))
    return shared


def dimensioned_metric(name: str, unit: MetricUnit, value: float, **dimensions: str) -> None:
    """One metric with its own dimensions, flushed now (Powertools' ``single_metric``), unless
    POWERTOOLS_METRICS_DISABLED says no: ``single_metric`` prints regardless of that switch,
    which the ``Metrics`` object honours."""
    if is_metrics_disabled():
        return
    with single_metric(name=name, unit=unit, value=value) as metric:
        for key, dimension in dimensions.items():
            metric.add_dimension(name=key, value=dimension)


@contextmanager
def metrics_now() -> Iterator[EphemeralMetrics]:
    """Metrics of the function's service, added in the block and printed at its end on one line
    (Powertools' ``EphemeralMetrics``, a buffer of their own): where invocations share a process (the
    local emulator, the service tests), another function may flush the shared buffer of ``metrics()``
    under its own service before this invocation ends."""
    line = EphemeralMetrics()
    yield line
    if line.metric_set:
        line.flush_metrics()


def bind_request_ids(lambda_context: Any, correlation_id: str | None) -> None:
    """From now on this thread's log lines carry the invocation's ids, as Powertools'
    ``inject_lambda_context`` adds them (``function_request_id``, ``function_name``, ...) plus
    ``correlation_id`` (API Gateway's request id, when there is one).

    Thread-local keys, not ``inject_lambda_context``'s process-wide ones: the local servers
    answer concurrent requests from one process. ``clear_request_ids`` ends the request.
    """
    keys: dict[str, object] = {"correlation_id": correlation_id} if correlation_id else {}
    if lambda_context is not None:
        keys.update(build_lambda_context_model(lambda_context).__dict__)
    logger().thread_safe_clear_keys()
    logger().thread_safe_append_keys(**keys)


def clear_request_ids() -> None:
    logger().thread_safe_clear_keys()


def correlation_keys(event: Any) -> dict[str, str]:
    """The ids an operator searches a function's lines by, from whatever event it was given: a saga
    step's ``order_id`` and ``execution_name``; an EventBridge event's ``order_id`` and ``event_id``
    (the shop's events, read by the consumers); a Step Functions status change's execution name and
    the order id in its input (the stopped-execution handler)."""
    if not isinstance(event, dict):
        return {}
    keys = {k: event[k] for k in ("order_id", "execution_name") if isinstance(event.get(k), str) and event[k]}
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return keys
    keys |= {k: detail[k] for k in ("order_id", "event_id") if isinstance(detail.get(k), str) and detail[k]}
    if event.get("detail-type") == "Step Functions Execution Status Change":
        if isinstance(detail.get("name"), str):
            keys["execution_name"] = detail["name"]
        try:
            execution_input = json.loads(detail.get("input") or "{}")
        except ValueError:
            execution_input = None
        if isinstance(execution_input, dict) and isinstance(execution_input.get("order_id"), str):
            keys["order_id"] = execution_input["order_id"]
    return keys


def instrumented(func: Callable[[dict[str, Any], Any], Any]) -> Callable[[dict[str, Any], Any], Any]:
    """Wrap a Lambda entry point with the Powertools logger, tracer and metrics.

    The wrapping happens on the first invocation (cold start), not at import, so importing a
    handler reads no environment. Every log line carries ``order_id`` and the execution name
    when the event has them (saga steps get both from the state machine; ``correlation_keys``).
    """
    wrapped: list[Callable[[dict[str, Any], Any], Any]] = []
    lock = threading.Lock()

    def with_correlation_keys(event: dict[str, Any], context: Any) -> Any:
        # Thread-local keys: on Lambda one invocation runs at a time, but the local emulator runs
        # many functions' invocations concurrently in one process, and the invocation's ids that
        # ``inject_lambda_context`` appends are process-wide: the last invocation to start would
        # name every line (thread-local keys take precedence; on Lambda the values are the same).
        logger().thread_safe_clear_keys()
        keys: dict[str, Any] = dict(build_lambda_context_model(context).__dict__) if context is not None else {}
        keys |= correlation_keys(event)
        if keys:
            logger().thread_safe_append_keys(**keys)
        try:
            return func(event, context)
        except ShopError as error:
            # An outcome the state machine handles (declined, out of stock, retried transients).
            logger().info("step ended with %s", type(error).__name__, extra={"error_detail": str(error)})
            raise
        except Exception:
            logger().exception("step failed unexpectedly")
            raise

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
