"""The whole stack on a laptop: `make run` (and the HTTP test tier) start it with this module.

One process, three threads, so Ctrl-C or SIGTERM leaves nothing behind:
- the AWS emulator (moto's server) on the LocalStack edge port, with Step Functions executing
  definitions for real and Lambda invocations running the project's handlers (no Docker);
- the API under Chalice's local dev server (no autoreload), with the template's Gateway
  Responses emulated;
- a scheduler that fires the template's `Schedule` events (e.g. the reservation sweeper);
- the tables' streams delivered to the functions of the template's `DynamoDB` events
  (`infra/local/streams.py`: the event publishers), as Lambda's event source mappings do.

The stack is deployed from infra/template.yaml by infra/local/deploy.py, through
localstack-client, so any LocalStack-style endpoint works the same way.

    python -m infra.local.stack [--api-port 8000] [--aws-port 4566] [--state-dir .local]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.local.signals import StopRequests
from infra.local.template import REPO_ROOT

REGION = "us-east-1"
DEMO_CATALOG = Path(__file__).with_name("demo_catalog.json")
DEMO_CUSTOMERS = ("alice", "bob")
DEMO_ADMIN = "admin"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--aws-port", type=int, default=4566)
    # `make run` fixes it (4567) so `chalice local` can be pointed at a known issuer (README).
    parser.add_argument("--identity-port", type=int, default=0, help="the dev token issuer's port (0: a free one)")
    parser.add_argument("--state-dir", type=Path, default=REPO_ROOT / ".local")
    parser.add_argument("--no-seed", action="store_true", help="deploy an empty catalog")
    parser.add_argument(
        "--no-api", action="store_true", help="everything but the API (`make emulator`: for `chalice local`)"
    )
    parser.add_argument(
        "--retry-interval-seconds",
        default=None,
        help="override the template's RetryIntervalSeconds parameter (the HTTP tests use 1)",
    )
    return parser.parse_args(argv)


def _configure_process_environment(aws_endpoint: str, aws_port: int) -> None:
    """Everything in this process (API, Lambda handlers) talks to the local emulator.

    In-process calls are intercepted by moto directly (see `_start_emulator`), so no
    AWS_ENDPOINT_URL is set here (moto would not intercept calls that name an endpoint);
    Lambda handlers run in a subprocess get the server's address instead.
    """
    os.environ.pop("AWS_ENDPOINT_URL", None)
    os.environ.update(
        {
            "SHOP_EMULATOR_ENDPOINT": aws_endpoint,
            "MOTO_PORT": str(aws_port),
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            # No X-Ray daemon on a laptop: the Tracer would only warn on every segment.
            "POWERTOOLS_TRACE_DISABLED": "true",
            "AWS_XRAY_SDK_ENABLED": "false",
        }
    )
    # A quiet console by default: the API's access log and the EMF metric lines CloudWatch would
    # receive (one per completed or cancelled order). POWERTOOLS_LOG_LEVEL=INFO adds every step's
    # structured log lines.
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")


def _start_emulator(host: str, port: int) -> list[Callable[[], None]]:
    """moto in this process, and its server on the edge port for everything outside it.

    Calls made inside the process (the API, the Lambda handlers, the Step Functions
    interpreter invoking Lambda) are intercepted in memory, as in the service tests; going
    through the HTTP server instead would serialize every call on moto's request routing.
    Both paths reach the same backends. Returns the cleanups, in the order to run them.
    """
    from moto import mock_aws
    from moto.server import ThreadedMotoServer

    from infra.local import lambda_runtime, moto_dynamodb, moto_events, moto_stepfunctions

    lambda_runtime.install()
    moto_dynamodb.install()
    moto_stepfunctions.install()
    moto_events.install()
    in_process = mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
    in_process.start()
    # The emulator's per-request access log would drown the API's.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    return [in_process.stop, server.stop]


# Each port the stack serves, with the make variable and the option that move it.
_PORT_SETTINGS = {
    "the API": ("PORT", "--api-port"),
    "the AWS emulator": ("AWS_PORT", "--aws-port"),
    "the dev identity provider": ("IDENTITY_PORT", "--identity-port"),
}


def _require_free(host: str, ports: dict[str, int]) -> None:
    """Stop with a clear message, before starting anything, when a port the stack serves is taken
    (LocalStack on 4566, another checkout's stack).

    moto's server binds in a thread of its own: on a taken port that thread died and ``start()``
    waited for it forever, deaf to Ctrl-C and SIGTERM, which this process handles only once the
    stack is up; the others failed with a bare traceback after the deployment. Port 0 is any free one.
    """
    import socket

    chosen = [(what, port) for what, port in ports.items() if port != 0]
    for index, (what, port) in enumerate(chosen):
        for other, same in chosen[index + 1 :]:
            if same == port:
                raise SystemExit(f"{what} and {other} were both given port {port}: each needs a port of its own")
    for what, port in chosen:
        try:
            socket.create_server((host, port)).close()
        except OSError as error:
            variable, option = _PORT_SETTINGS[what]
            raise SystemExit(
                f"the port of {what}, {host}:{port}, is taken ({error.strerror}): stop what holds it, or choose "
                f"another (make run {variable}=<port>; python -m infra.local.stack {option} <port>)"
            ) from error


def _dynamodb_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)


def _streams_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("dynamodbstreams", endpoint_url=endpoint, region_name=REGION)


def _seed_catalog() -> int:
    from shop.domain import catalog
    from shop.models.catalog import CreateProductRequest

    products = json.loads(DEMO_CATALOG.read_text())
    for product in products:
        catalog.create_product(CreateProductRequest.model_validate(product))
    return len(products)


def _write_tokens(state_dir: Path, identity: Any) -> Path:
    tokens = {
        "admin": identity.token(DEMO_ADMIN, groups=["admin"]),
        "customers": {name: identity.token(name) for name in DEMO_CUSTOMERS},
    }
    path = state_dir / "dev-tokens.json"
    path.write_text(json.dumps(tokens, indent=2) + "\n")
    path.chmod(0o600)
    return path


def scheduled_event() -> bytes:
    """The event EventBridge Scheduler's classic schedules deliver (its ``time`` is when it fired)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps(
        {"version": "0", "source": "aws.events", "detail-type": "Scheduled Event", "time": now, "detail": {}}
    ).encode()


def _run_schedules(schedules: list[Any], lambda_client: Any, stop: threading.Event) -> None:
    """Fire each `Schedule` event of the template at its rate, as EventBridge would."""
    next_run = {schedule.function_name: 0.0 for schedule in schedules}
    while not stop.is_set():
        now = time.monotonic()
        for schedule in schedules:
            if now >= next_run[schedule.function_name]:
                next_run[schedule.function_name] = now + schedule.every_seconds
                try:
                    lambda_client.invoke(FunctionName=schedule.function_name, Payload=scheduled_event())
                except Exception as error:  # noqa: BLE001 - a failed run is retried at the next tick
                    print(f"schedule {schedule.function_name} failed: {error}", file=sys.stderr)
        stop.wait(1.0)


@dataclass
class LocalStack:
    """A running local stack; ``stop()`` ends everything it started."""

    api_url: str
    aws_endpoint: str
    tokens_path: Path
    seeded: int
    deployed: Any
    # The table streams' deliveries to their functions (empty when the streams are not delivered).
    stream_deliveries: list[Any] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    def client(self, service: str, **options: Any) -> Any:
        """A boto3 client bound to this stack's emulator, through localstack-client (``options``:
        boto3's, e.g. ``config``)."""
        from localstack_client.session import Session

        host_port = self.aws_endpoint.removeprefix("http://")
        return Session(region_name=REGION, localstack_host=host_port).client(service, **options)

    def stop(self) -> None:
        self._stop.set()
        while self._cleanups:
            self._cleanups.pop()()


def start_stack(
    *,
    host: str = "127.0.0.1",
    api_port: int = 8000,
    aws_port: int = 4566,
    identity_port: int = 0,
    state_dir: Path = REPO_ROOT / ".local",
    seed: bool = True,
    parameters: dict[str, str] | None = None,
    dynamodb_endpoint: str | None = None,
    streams_endpoint: str | None = None,
    access_log: bool = True,
    api: bool = True,
) -> LocalStack:
    """Start the emulator, deploy the template, seed, start the scheduler and the API.

    ``dynamodb_endpoint`` puts the tables on another DynamoDB (e.g. DynamoDB Local) while
    Lambda and Step Functions stay in the emulator; their streams are delivered only with
    ``streams_endpoint``, the DynamoDB Streams API that serves them (DynamoDB Local answers both
    APIs at one address).
    """
    ports = {"the AWS emulator": aws_port, "the dev identity provider": identity_port}
    _require_free(host, {"the API": api_port, **ports} if api else ports)
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    aws_endpoint = f"http://{host}:{aws_port}"
    _configure_process_environment(aws_endpoint, aws_port)
    if dynamodb_endpoint:
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = dynamodb_endpoint

    from localstack_client.session import Session

    from infra.local import lambda_runtime
    from infra.local.deploy import deploy
    from infra.local.identity import DevIdentityProvider

    cleanups: list[Callable[[], None]] = []
    stop = threading.Event()
    try:
        cleanups += _start_emulator(host, aws_port)
        aws = Session(region_name=REGION, localstack_host=f"{host}:{aws_port}")
        identity = DevIdentityProvider.create(state_dir / "dev-idp")
        identity.serve(port=identity_port)
        cleanups.append(identity.close)
        deployed = deploy(
            dynamodb=_dynamodb_client(dynamodb_endpoint) if dynamodb_endpoint else aws.client("dynamodb"),
            lambda_client=aws.client("lambda"),
            iam=aws.client("iam"),
            stepfunctions=aws.client("stepfunctions"),
            events=aws.client("events"),
            ssm=aws.client("ssm"),
            secretsmanager=aws.client("secretsmanager"),
            sqs=aws.client("sqs"),
            prefix="shop",
            region=REGION,
            identity_issuer=identity.issuer,
            identity_audience=identity.audience,
            parameters=parameters,
        )
        lambda_runtime.export_environment(deployed.api_environment)
        seeded = _seed_catalog() if seed else 0
        tokens_path = _write_tokens(state_dir, identity)

        scheduler = threading.Thread(
            target=_run_schedules, args=(deployed.schedules, aws.client("lambda"), stop), daemon=True
        )
        scheduler.start()
        cleanups.append(stop.set)

        # The streams of tables kept in moto's own process (`make chaos`) are not delivered: that
        # run checks the saga's books, not the events. `make bench` delivers DynamoDB Local's, so
        # that the events' cost is measured with the order's.
        stream_deliveries: list[Any] = []
        if deployed.stream_mappings and (not dynamodb_endpoint or streams_endpoint):
            from infra.local.streams import StreamPoller, deliveries

            streams = _streams_client(streams_endpoint) if streams_endpoint else aws.client("dynamodbstreams")
            stream_deliveries = deliveries(deployed.stream_mappings, streams, aws.client("lambda"))
            poller = StreamPoller(
                stream_deliveries,
                on_error=lambda mapping, error: print(
                    f"stream delivery to {mapping.function_name} failed: {error}", file=sys.stderr
                ),
            )
            poller.start()
            cleanups.append(poller.stop)

        if api:
            from app import app
            from infra.local.api_server import create_api_server

            api_server = create_api_server(app, host, api_port, access_log=access_log)
            threading.Thread(target=api_server.serve_forever, daemon=True).start()
            cleanups.append(api_server.shutdown)
    except BaseException:
        for cleanup in reversed(cleanups):
            cleanup()
        raise
    return LocalStack(
        api_url=f"http://{host}:{api_port}",
        aws_endpoint=aws_endpoint,
        tokens_path=tokens_path,
        seeded=seeded,
        deployed=deployed,
        stream_deliveries=stream_deliveries,
        _stop=stop,
        _cleanups=cleanups,
    )


def console_url(stack: LocalStack, *, to_terminal: bool) -> str:
    """The operators' console URL, with the dev admin token in the fragment (which browsers never send).

    The token goes to a terminal only: when stdout is a file or a pipe (a log), the URL comes
    without it and the page asks for the token from the dev tokens file.
    """
    if not to_terminal:
        return f"{stack.api_url}/ops  (admin token: {stack.tokens_path})"
    admin_token = json.loads(stack.tokens_path.read_text())["admin"]
    return f"{stack.api_url}/ops#token={admin_token}"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    stops = StopRequests().install(signal.SIGINT, signal.SIGTERM)
    parameters = {}
    if args.retry_interval_seconds:
        parameters["RetryIntervalSeconds"] = args.retry_interval_seconds
    stack = start_stack(
        host=args.host,
        api_port=args.api_port,
        aws_port=args.aws_port,
        identity_port=args.identity_port,
        state_dir=args.state_dir,
        seed=not args.no_seed,
        parameters=parameters,
        api=not args.no_api,
    )
    try:
        lines = ["", "Shop is up."]
        if not args.no_api:
            lines.append(f"  API:           {stack.api_url}  (GET /health, GET /openapi.json)")
        lines += [
            f"  AWS emulator:  {stack.aws_endpoint}  (LocalStack edge port; moto)",
            f"  Dev tokens:    {stack.tokens_path}",
            f"  Demo catalog:  {stack.seeded} products",
        ]
        if not args.no_api:
            lines.append(f"  Ops console:   {console_url(stack, to_terminal=sys.stdout.isatty())}")
        # Beside this stack's own API, chalice local takes another port.
        chalice_port = "" if args.no_api else " --port 8001"
        lines += [
            f"  chalice local: AWS_ENDPOINT_URL={stack.aws_endpoint}"
            f" AUTH_ISSUER={stack.deployed.api_environment['AUTH_ISSUER']} .venv/bin/chalice local{chalice_port}",
            "Ctrl-C stops everything.",
        ]
        print("\n".join(lines), flush=True)
        stops.wait(0.5)
        print("Stopping...", flush=True)
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
