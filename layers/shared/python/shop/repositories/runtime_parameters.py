"""The runtime parameters in SSM Parameter Store, read through Powertools Parameters.

One ``GetParametersByPath`` (paged, ten parameters a page) reads every parameter under the
stack's configuration path; Powertools caches the answer for ``max_age`` seconds, so a warm
function asks SSM at most once per interval and an operator's change is seen within it. The
provider is built on first use with the process's cached SSM client (``shop.aws``): no AWS call
and no environment read at import time. Only ``shop.config`` calls this; it validates the values.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from aws_lambda_powertools.utilities.parameters import SSMProvider

from shop import aws
from shop.observability import logger

_lock = threading.Lock()
_provider: SSMProvider | None = None
# After a failed read, SSM is not asked again before this (monotonic) time: a throttled or
# unreachable Parameter Store must not add a failing call to every request.
_retry_after = 0.0


def _ssm() -> SSMProvider:
    global _provider
    with _lock:
        if _provider is None:
            _provider = SSMProvider(boto3_client=aws.client("ssm"))
        return _provider


def read_path(path: str, max_age: int) -> Mapping[str, str] | None:
    """Every parameter under ``path`` by its name relative to it; None if the read failed (logged).

    Powertools answers from its cache while the last read is younger than ``max_age`` (the same
    mapping object each time, so callers can tell that nothing was fetched).
    """
    global _retry_after
    if time.monotonic() < _retry_after:
        return None
    try:
        values = _ssm().get_multiple(path, max_age=max_age, recursive=True)
    except Exception as error:  # noqa: BLE001 - configuration must never fail a request; defaults apply
        _retry_after = time.monotonic() + max(max_age, 1)
        logger().error(
            "runtime parameters unreadable; keeping the last good values", extra={"path": path, "error": str(error)}
        )
        return None
    return values  # type: ignore[return-value]


def clear_cache() -> None:
    """Forget cached values and the provider (tests deploy a fresh emulator; they also expire it)."""
    global _provider, _retry_after
    with _lock:
        _provider = None
        _retry_after = 0.0
