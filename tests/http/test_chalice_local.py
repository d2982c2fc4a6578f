"""`chalice local`, as a Chalice user types it first, from the repository root (README, "chalice local").

It runs against the emulator of the stack `make run` starts, with only what the README says to add
to the environment: the emulator's endpoint and the dev token issuer, both printed by the stack.
Everything else comes from the dev stage of .chalice/config.json; no PYTHONPATH is set.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO_ROOT
from tests.http.conftest import STARTUP_DEADLINE_SECONDS, RunningStack, free_port

# The line the stack prints once it is up, e.g.
#   chalice local: AWS_ENDPOINT_URL=http://127.0.0.1:4566 AUTH_ISSUER=http://127.0.0.1:4567 .venv/bin/chalice local ...
CHALICE_LOCAL_LINE = re.compile(r"chalice local: (?P<variables>(?:[A-Z_]+=\S+ )+)\.venv/bin/chalice local")


@dataclass
class ChaliceLocal:
    url: str
    process: subprocess.Popen[str]
    log_path: Path


def printed_environment(stack: RunningStack) -> dict[str, str]:
    """The variables the stack tells a user to give `chalice local` (waits for the line)."""
    log_path = stack.state_dir / "stack.log"
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while (match := CHALICE_LOCAL_LINE.search(log_path.read_text())) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"the stack printed no chalice local line:\n{log_path.read_text()}")
        time.sleep(0.2)  # polling interval of the check above, not a wait in place of it
    return dict(pair.split("=", 1) for pair in match["variables"].split())


def tail(log_path: Path, lines: int = 40) -> str:
    return "\n".join(log_path.read_text().splitlines()[-lines:])


@pytest.fixture(scope="module")
def chalice_local(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaliceLocal]:
    port = free_port()
    # A shell's environment without the test run's AWS, Powertools or import path settings.
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "POWERTOOLS_")) and key != "PYTHONPATH"
    }
    environment.update(printed_environment(stack))
    log_path = tmp_path_factory.mktemp("chalice-local") / "chalice-local.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "chalice"), "local", "--no-autoreload", "--port", str(port)],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    running = ChaliceLocal(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"chalice local exited ({process.returncode}):\n{tail(log_path)}")
            try:
                # Listening is enough: the tests below say what a wrong answer means.
                requests.get(f"{running.url}/health", timeout=2)
                break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"chalice local did not listen in time:\n{tail(log_path)}")
            time.sleep(0.2)  # polling interval of the readiness check above
        yield running
    finally:
        # Ctrl-C, as a developer stops it. How fast it stops is not what these tests check (under a
        # loaded machine it once took over 30 s): past that, it is killed rather than failing them.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def test_chalice_local_lists_the_demo_catalog(chalice_local: ChaliceLocal) -> None:
    response = requests.get(f"{chalice_local.url}/products", timeout=10)

    assert response.status_code == 200, tail(chalice_local.log_path)
    skus = [item["sku"] for item in response.json()["items"]]
    assert skus, "the demo catalog the stack seeded"


def test_chalice_local_accepts_the_stacks_dev_tokens(chalice_local: ChaliceLocal, stack: RunningStack) -> None:
    mine = requests.get(f"{chalice_local.url}/orders", headers=stack.auth("alice"), timeout=10)
    anonymous = requests.get(f"{chalice_local.url}/orders", timeout=10)

    assert mine.status_code == 200, tail(chalice_local.log_path)
    assert isinstance(mine.json()["items"], list)
    assert anonymous.status_code == 401
