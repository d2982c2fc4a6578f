"""Run Lambda invocations inside moto without Docker.

moto's Lambda Invoke normally starts a Docker container. This adapter replaces moto's private
``LambdaFunction._invoke_lambda`` so an invocation loads the project's real handler from the
function's deployment zip (plus its layers) and runs it:

- in-process (default): fast, and it shares the test's mocks; or
- in a subprocess per invocation (``SHOP_LAMBDA_ISOLATION=subprocess``): a clean interpreter with
  exactly the function's environment, talking to the emulator over HTTP (server mode only).

Errors come back in AWS's shape, ``{"errorType": <exception class name>, "errorMessage", ...}``,
so Step Functions' Retry and Catch match the same error names as on AWS.

It depends on one private moto method; ``tests/service/test_lambda_runtime_canary.py`` fails loudly
if a moto upgrade changes it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from moto.awslambda.models import LambdaFunction, lambda_backends

CACHE_DIR = Path(tempfile.gettempdir()) / "shop-lambda-code"
_ORIGINAL_INVOKE = LambdaFunction._invoke_lambda
# Variables the host process decides for in-process invocations when it has set them.
HOST_OWNED = frozenset(
    {"POWERTOOLS_LOG_LEVEL", "POWERTOOLS_TRACE_DISABLED", "POWERTOOLS_METRICS_DISABLED", "AWS_XRAY_SDK_ENABLED"}
)
_lock = threading.RLock()
# Its own lock: every invocation records its time, and sharing the loading lock made hundreds of
# invocations queue behind each other in a chaos run.
_stats_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}
# The function whose code is running (its name) in this thread of control, None outside any
# invocation: set around each in-process handler call, so an AWS call can be attributed to the
# function whose role would make it (tests/service/iam_audit.py). Threads the handler starts do
# not inherit it unless they are given a copy of the context.
current_function: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_function", default=None)


@contextlib.contextmanager
def invoking(function_name: str) -> Iterator[None]:
    """Run the enclosed code as ``function_name``; a nested invocation restores the outer one."""
    token = current_function.set(function_name)
    try:
        yield
    finally:
        current_function.reset(token)


@dataclass
class FaultInjection:
    """Test hooks that make the emulator behave like a real, unreliable platform.

    ``duplicate_deliveries``: function names whose every invocation runs the handler twice with
    the same event (Lambda and Step Functions may deliver more than once); the second result is
    returned. ``before_invoke``: called with (function name, event) before the handler, e.g. to
    raise a Lambda service error or to pause an execution at a chosen step. ``after_invoke``:
    called with (function name, event) after the handler ran; an exception it raises replaces
    the handler's answer, e.g. ``lambda_timeout()`` for a function that timed out after its
    effect (the answer is lost, the effect is not).
    """

    duplicate_deliveries: set[str] = field(default_factory=set)
    before_invoke: Callable[[str, Any], None] | None = None
    after_invoke: Callable[[str, Any], None] | None = None
    # Per invocation: (function name, event) -> deliver this one twice.
    duplicate_when: Callable[[str, Any], bool] | None = None

    def clear(self) -> None:
        self.duplicate_deliveries.clear()
        self.before_invoke = None
        self.after_invoke = None
        self.duplicate_when = None


def lambda_timeout(seconds: float = 15.0) -> Exception:
    """The error Lambda reports for a function that ran out of time: Step Functions sees the
    error name ``Sandbox.Timedout``, as on AWS."""
    timed_out = type("Sandbox.Timedout", (Exception,), {})
    return timed_out(f"Task timed out after {seconds:.2f} seconds")


faults = FaultInjection()


@dataclass
class InvocationStats:
    """Handler wall time per function, for `make bench` (in-process, so no cold starts or network)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def record(self, function_name: str, elapsed: float) -> None:
        with _stats_lock:
            self.seconds.setdefault(function_name, []).append(elapsed)

    def reset(self) -> None:
        with _stats_lock:
            self.seconds.clear()


stats = InvocationStats()


@dataclass
class LambdaContext:
    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = ""
    log_stream_name: str = ""
    timeout_seconds: int = 15
    started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        """As on AWS: the function's timeout less the time this invocation has run."""
        return max(int((self.timeout_seconds - (time.monotonic() - self.started)) * 1000), 0)


def _extract(zip_bytes: bytes, kind: str) -> Path:
    digest = hashlib.sha256(zip_bytes).hexdigest()[:16]
    target = CACHE_DIR / f"{kind}-{digest}"
    if not target.exists():
        staging = Path(tempfile.mkdtemp(dir=CACHE_DIR.parent if CACHE_DIR.exists() else None))
        zipfile.ZipFile(io.BytesIO(zip_bytes)).extractall(staging)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        # Another invocation may have extracted the same code first; either copy will do.
        with contextlib.suppress(OSError):
            staging.rename(target)
    return target


def _layer_dirs(function: LambdaFunction) -> list[Path]:
    backend = lambda_backends[function.account_id][function.region]
    dirs = []
    for layer in function.layers:
        version = backend.layers_versions_by_arn(layer["Arn"])
        if version is not None and version.code_bytes:
            dirs.append(_extract(version.code_bytes, "layer") / "python")
    return dirs


def _handler_of(function: LambdaFunction, code_dir: Path) -> Callable[[Any, Any], Any]:
    module_file, handler_name = str(function.handler).rsplit(".", 1)
    key = f"{function.function_name}:{code_dir.name}"
    with _lock:
        module = _modules.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(
                f"lambda_{function.function_name.replace('-', '_')}_{code_dir.name.replace('-', '_')}",
                code_dir / f"{module_file.replace('.', '/')}.py",
            )
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _modules[key] = module
    return getattr(module, handler_name)


def _error_payload(error: BaseException) -> str:
    """Lambda's answer for a handler that raised: its message, type and the innermost frames.

    The frames are formatted here, as Lambda's runtime lists them, not by ``traceback.format_*``:
    since Python 3.11 that parses every frame's source line (for the ``^^^`` markers), which was
    7% of the stack's CPU in a chaos run, where steps fail by the thousand.
    """
    frames = traceback.extract_tb(error.__traceback__)[-10:]
    return json.dumps(
        {
            "errorMessage": str(error),
            "errorType": type(error).__name__,
            "stackTrace": [
                f'  File "{f.filename}", line {f.lineno}, in {f.name}\n    {f.line or ""}\n' for f in frames
            ],
        }
    )


def _context(function: LambdaFunction) -> LambdaContext:
    return LambdaContext(
        function_name=function.function_name,
        function_version=str(function.version),
        invoked_function_arn=function.function_arn,
        memory_limit_in_mb=int(function.memory_size),
        log_group_name=function.logs_group_name,
        timeout_seconds=int(function.timeout),
    )


def export_environment(variables: dict[str, str]) -> None:
    """Export a function's environment into this process, the host's observability settings winning.

    Tests keep logs at WARNING and X-Ray off; `make run` keeps its console quiet unless asked.
    """
    os.environ.update({k: v for k, v in variables.items() if not (k in HOST_OWNED and k in os.environ)})


def _invoke_in_process(function: LambdaFunction, event: Any) -> tuple[str, bool, str]:
    code_dir = _extract(function.code_bytes, "code")
    with _lock:
        for layer_dir in _layer_dirs(function):
            if str(layer_dir) not in sys.path:
                # Appended: the process's own copy of the layer (the source tree) wins, so a
                # test always runs the code under test.
                sys.path.append(str(layer_dir))
        # Every function's environment comes from the same template Globals; only a few
        # per-function values differ, and Powertools reads those once per cold start.
        export_environment(function.environment_vars)
    # The module's import too: on Lambda the init code runs with the function's role.
    with invoking(function.function_name):
        handler = _handler_of(function, code_dir)
        try:
            result = handler(event, _context(function))
        except Exception as error:  # noqa: BLE001 - any handler failure is an invocation error
            return _error_payload(error), True, ""
    return json.dumps(result), False, ""


_SUBPROCESS_RUNNER = """
import importlib, json, sys, traceback
module_name, handler_name = sys.argv[1].rsplit(".", 1)
event = json.loads(sys.stdin.read())
class Context:
    def __init__(self, data): self.__dict__.update(data)
    def get_remaining_time_in_millis(self): return self.timeout_seconds * 1000
try:
    result = getattr(importlib.import_module(module_name), handler_name)(event, Context(json.loads(sys.argv[2])))
    print("\\n" + json.dumps(result)); sys.exit(0)
except Exception as error:
    print("\\n" + json.dumps({"errorMessage": str(error), "errorType": type(error).__name__,
                             "stackTrace": traceback.format_exception(error)[-10:]})); sys.exit(1)
"""


def _invoke_in_subprocess(function: LambdaFunction, event: Any) -> tuple[str, bool, str]:
    code_dir = _extract(function.code_bytes, "code")
    path = [str(code_dir), *(str(d) for d in _layer_dirs(function))]
    environment = {
        **{k: v for k, v in os.environ.items() if k.startswith(("AWS_", "PATH", "HOME", "LANG", "POWERTOOLS_"))},
        **function.environment_vars,
        "PYTHONPATH": os.pathsep.join(path + [p for p in sys.path if "site-packages" in p]),
    }
    if "SHOP_EMULATOR_ENDPOINT" in os.environ:
        # A separate interpreter cannot share the host's in-memory moto: it calls the server.
        environment["AWS_ENDPOINT_URL"] = os.environ["SHOP_EMULATOR_ENDPOINT"]
    context = _context(function).__dict__
    completed = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_RUNNER, str(function.handler), json.dumps(context)],
        input=json.dumps(event),
        capture_output=True,
        text=True,
        env=environment,
        cwd=code_dir,  # as in Lambda's /var/task: the handler module wins over any same-named one
        timeout=int(function.timeout) + 30,
        check=False,
    )
    lines = completed.stdout.rstrip("\n").splitlines()
    payload = lines[-1] if lines else _error_payload(RuntimeError(completed.stderr[-2000:]))
    logs = "\n".join(lines[:-1]) + completed.stderr
    return payload, completed.returncode != 0, logs


def _invoke(self: LambdaFunction, event: Any = None) -> tuple[str, bool, str]:
    event = {} if event is None else event
    if faults.before_invoke is not None:
        try:
            faults.before_invoke(self.function_name, event)
        except Exception as error:  # noqa: BLE001 - injected faults surface as invocation errors
            return _error_payload(error), True, ""
    run = _invoke_in_subprocess if os.environ.get("SHOP_LAMBDA_ISOLATION") == "subprocess" else _invoke_in_process
    started = time.perf_counter()
    result = run(self, event)
    stats.record(self.function_name, time.perf_counter() - started)
    duplicate = faults.duplicate_when
    if self.function_name in faults.duplicate_deliveries or (
        duplicate is not None and duplicate(self.function_name, event)
    ):
        result = run(self, event)
    if faults.after_invoke is not None:
        try:
            faults.after_invoke(self.function_name, event)
        except Exception as error:  # noqa: BLE001 - the answer is lost; the effect stays applied
            return _error_payload(error), True, ""
    return result


def install() -> None:
    """Route moto's Lambda invocations to the project's handlers (idempotent)."""
    LambdaFunction._invoke_lambda = _invoke  # type: ignore[method-assign]
