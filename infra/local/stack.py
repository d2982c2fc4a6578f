"""The whole stack on a laptop: `make run` (and the HTTP test tier) start it with this module.

One process, three threads, so Ctrl-C or SIGTERM leaves nothing behind:
- the AWS emulator (moto's server) on the LocalStack edge port, with Step Functions executing
  definitions for real and Lambda invocations running the project's handlers (no Docker);
- the API under Chalice's local dev server (no autoreload), with the template's Gateway
  Responses emulated;
- a scheduler that fires the template's `Schedule` events (e.g. the reservation sweeper).

The stack is deployed from infra/template.yaml by infra/local/deploy.py, through
localstack-client, so any LocalStack-style endpoint works the same way.

    python -m infra.local.stack [--api-port 8000] [--aws-port 4566] [--state-dir .local]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    parser.add_argument("--state-dir", type=Path, default=REPO_ROOT / ".local")
    parser.add_argument("--no-seed", action="store_true", help="deploy an empty catalog")
    parser.add_argument(
        "--retry-interval-seconds",
        default=None,
        help="override the template's RetryIntervalSeconds parameter (the HTTP tests use 1)",
    )
    return parser.parse_args(argv)


def _configure_process_environment(aws_endpoint: str) -> None:
    """Everything in this process (API, Lambda handlers) talks to the local emulator."""
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": aws_endpoint,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            # No X-Ray daemon on a laptop: the Tracer would only warn on every segment.
            "POWERTOOLS_TRACE_DISABLED": "true",
            "AWS_XRAY_SDK_ENABLED": "false",
        }
    )
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")


def _pagination_secret(state_dir: Path) -> str:
    secret_file = state_dir / "pagination-secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(48))
        secret_file.chmod(0o600)
    return secret_file.read_text().strip()


def _start_emulator(host: str, port: int) -> Any:
    import requests
    from moto.server import ThreadedMotoServer

    from infra.local import lambda_runtime

    lambda_runtime.install()
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    requests.post(
        f"http://{host}:{port}/moto-api/config",
        json={"stepfunctions": {"execute_state_machine": True}},
        timeout=10,
    ).raise_for_status()
    return server


def _seed_catalog() -> int:
    from shop.domain import catalog
    from shop.models.catalog import NewProduct

    products = json.loads(DEMO_CATALOG.read_text())
    for product in products:
        catalog.create_product(NewProduct.model_validate(product))
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


def _run_schedules(schedules: list[Any], lambda_client: Any, stop: threading.Event) -> None:
    """Fire each `Schedule` event of the template at its rate, as EventBridge would."""
    next_run = {schedule.function_name: 0.0 for schedule in schedules}
    import time

    while not stop.is_set():
        now = time.monotonic()
        for schedule in schedules:
            if now >= next_run[schedule.function_name]:
                next_run[schedule.function_name] = now + schedule.every_seconds
                try:
                    lambda_client.invoke(FunctionName=schedule.function_name, Payload=b'{"source": "local.schedule"}')
                except Exception as error:  # noqa: BLE001 - a failed run is retried at the next tick
                    print(f"schedule {schedule.function_name} failed: {error}", file=sys.stderr)
        stop.wait(1.0)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    aws_endpoint = f"http://{args.host}:{args.aws_port}"
    _configure_process_environment(aws_endpoint)

    from localstack_client.session import Session

    from infra.local.deploy import deploy
    from infra.local.identity import DevIdentityProvider

    stop = threading.Event()
    cleanups: list[Callable[[], None]] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    try:
        emulator = _start_emulator(args.host, args.aws_port)
        cleanups.append(emulator.stop)
        aws = Session(region_name=REGION, localstack_host=f"{args.host}:{args.aws_port}")
        identity = DevIdentityProvider.create(state_dir / "dev-idp")
        parameters = {"PaginationSecret": _pagination_secret(state_dir)}
        if args.retry_interval_seconds:
            parameters["RetryIntervalSeconds"] = args.retry_interval_seconds
        stack = deploy(
            dynamodb=aws.client("dynamodb"),
            lambda_client=aws.client("lambda"),
            iam=aws.client("iam"),
            stepfunctions=aws.client("stepfunctions"),
            prefix="shop",
            region=REGION,
            identity_issuer=identity.issuer,
            identity_audience=identity.audience,
            parameters=parameters,
        )
        os.environ.update(stack.api_environment)
        seeded = 0 if args.no_seed else _seed_catalog()
        tokens_path = _write_tokens(state_dir, identity)

        scheduler = threading.Thread(
            target=_run_schedules, args=(stack.schedules, aws.client("lambda"), stop), daemon=True
        )
        scheduler.start()

        from app import app
        from infra.local.api_server import create_api_server

        api_server = create_api_server(app, args.host, args.api_port)
        api_thread = threading.Thread(target=api_server.serve_forever, daemon=True)
        api_thread.start()
        cleanups.append(api_server.shutdown)

        print(
            f"Shop is up.\n"
            f"  API:           http://{args.host}:{args.api_port}  (GET /health, GET /openapi.json)\n"
            f"  AWS emulator:  {aws_endpoint}  (LocalStack edge port; moto)\n"
            f"  Dev tokens:    {tokens_path}\n"
            f"  Demo catalog:  {seeded} products\n"
            f"Ctrl-C stops everything.",
            flush=True,
        )
        stop.wait()
        print("Stopping...", flush=True)
        return 0
    finally:
        stop.set()
        for cleanup in reversed(cleanups):
            cleanup()


if __name__ == "__main__":
    sys.exit(main())
