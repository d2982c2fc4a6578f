"""HTTP tier: the real local stack (`python -m infra.local.stack`, what `make run` starts) over real sockets.

The stack runs in a subprocess on free ports, so this tier passes while a `make run` stack is
up. boto3 reaches the emulator through localstack-client, as any LocalStack-style tooling would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from localstack_client.session import Session

from infra.local.template import load_template
from tests import statemachine_coverage
from tests.conftest import REPO_ROOT

STARTUP_DEADLINE_SECONDS = 120


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # One stack per test session: keep every HTTP test on the same xdist worker.
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.xdist_group("http-stack"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a new server could listen on the port now, as `make run`'s servers would.

    SO_REUSEADDR, as those servers set it: connections the old process closed may linger in
    TIME_WAIT, which never stops a new listener.
    """
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
        return True


@dataclass
class RunningStack:
    api_url: str
    aws_port: int
    state_dir: Path
    process: subprocess.Popen[str]

    @property
    def tokens(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "dev-tokens.json").read_text())

    def auth(self, who: str) -> dict[str, str]:
        """Headers for "admin", a demo customer ("alice", "bob") or any other customer name (a token
        signed by the stack's dev identity provider, as a sign-in would give)."""
        tokens = self.tokens
        if who == "admin":
            token = tokens["admin"]
        elif who in tokens["customers"]:
            token = tokens["customers"][who]
        else:
            import jwt

            from infra.local.identity import DevIdentityProvider

            issuer = jwt.decode(tokens["admin"], options={"verify_signature": False})["iss"]
            token = DevIdentityProvider.create(self.state_dir / "dev-idp").token(who, issuer=issuer)
        return {"Authorization": f"Bearer {token}"}

    def aws(self, service: str) -> Any:
        return Session(region_name="us-east-1", localstack_host=f"127.0.0.1:{self.aws_port}").client(service)

    def url(self, path: str) -> str:
        return f"{self.api_url}{path}"

    def table(self, logical_id: str) -> str:
        """The physical name of one of the template's tables in this stack."""
        return physical_name(self.aws("dynamodb").list_tables()["TableNames"], logical_id)

    def function(self, logical_id: str) -> str:
        """The physical name of one of the template's functions in this stack."""
        pages = self.aws("lambda").get_paginator("list_functions").paginate()
        return physical_name([f["FunctionName"] for page in pages for f in page["Functions"]], logical_id)

    def event_bus(self) -> str:
        """The name of the stack's own event bus, as the template names it (its Name property)."""
        buses = [bus["Name"] for bus in self.aws("events").list_event_buses()["EventBuses"] if bus["Name"] != "default"]
        template_name = load_template()["Resources"]["ShopEventBus"]["Properties"]["Name"]["Fn::Sub"]
        (name,) = [bus for bus in buses if bus.endswith(template_name.removeprefix("${AWS::StackName}"))]
        return name


def physical_name(names: list[str], logical_id: str) -> str:
    """The stack's physical name for ``logical_id`` among ``names`` (``<stack>-<logical id>``)."""
    (name,) = [name for name in names if name.rsplit("/", 1)[-1].endswith(f"-{logical_id}")]
    return name


def launch_stack(state_dir: Path, *extra_args: str) -> RunningStack:
    """`python -m infra.local.stack` (what `make run` starts) on free ports, once it answers /health."""
    api_port, aws_port = free_port(), free_port()
    log_path = state_dir / "stack.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    environment["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'layers/shared/python'}"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infra.local.stack",
                "--api-port",
                str(api_port),
                "--aws-port",
                str(aws_port),
                "--state-dir",
                str(state_dir),
                *extra_args,
            ],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    running = RunningStack(f"http://127.0.0.1:{api_port}", aws_port, state_dir, process)
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while True:
        if process.poll() is not None:
            pytest.fail(f"stack exited early ({process.returncode}):\n{log_path.read_text()}")
        try:
            if requests.get(running.url("/health"), timeout=2).status_code == 200:
                return running
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"stack not healthy in time:\n{log_path.read_text()}")
        time.sleep(0.2)  # polling interval of the readiness check above, not a wait in place of it


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = launch_stack(tmp_path_factory.mktemp("stack-state"), "--retry-interval-seconds", "1")
    yield running
    try:
        if running.process.poll() is None:  # the sagas this tier ran count towards the state machine coverage
            sfn = running.aws("stepfunctions")
            statemachine_coverage.record_executions(sfn, statemachine_coverage.deployed_state_machines(sfn))
    finally:
        running.process.send_signal(signal.SIGTERM)
        try:
            running.process.wait(timeout=30)
        finally:
            if running.process.poll() is None:
                running.process.kill()
