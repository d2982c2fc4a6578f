"""The stack `make run` starts, exercised over real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from infra.local.stack import DEMO_CATALOG
from tests.conftest import REPO_ROOT
from tests.http.conftest import STARTUP_DEADLINE_SECONDS, RunningStack, free_port, launch_stack, port_is_free


def test_health_answers_once_deployed_and_seeded(stack: RunningStack) -> None:
    response = requests.get(stack.url("/health"), timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_dev_tokens_file_has_the_contract_shape(stack: RunningStack) -> None:
    tokens = stack.tokens
    assert set(tokens) == {"admin", "customers"}
    assert set(tokens["customers"]) == {"alice", "bob"}
    me = requests.get(stack.url("/orders"), headers=stack.auth("alice"), timeout=5)
    assert me.status_code == 200


def test_demo_catalog_is_seeded_across_categories(stack: RunningStack) -> None:
    products, token = [], None
    while True:
        params = {"limit": "100", **({"next_token": token} if token else {})}
        page = requests.get(stack.url("/products"), params=params, timeout=5).json()
        products += page["items"]
        token = page["next_token"]
        if not token:
            break
    demo = {product["sku"]: product for product in json.loads(DEMO_CATALOG.read_text())}
    listed = {product["sku"]: product for product in products if product["sku"] in demo}
    assert len(demo) >= 24
    assert len({product["category"] for product in demo.values()}) >= 4
    assert set(listed) == set(demo)
    assert all(listed[sku]["available"] == demo[sku]["stock"] > 0 for sku in demo)


def test_emulator_speaks_localstack_style_through_localstack_client(stack: RunningStack) -> None:
    tables = stack.aws("dynamodb").list_tables()["TableNames"]
    assert "shop-ProductsTable" in tables
    machines = stack.aws("stepfunctions").list_state_machines()["stateMachines"]
    assert {"shop-CheckoutStateMachine", "shop-RefundStateMachine"} <= {m["name"] for m in machines}


def test_unknown_path_is_problem_json_404(stack: RunningStack) -> None:
    response = requests.get(stack.url("/no/such/route"), timeout=5)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["status"] == 404


def test_stack_stops_cleanly_on_sigterm_and_frees_its_ports(tmp_path: Path) -> None:
    running = launch_stack(tmp_path, "--no-seed")
    api_port = int(running.api_url.rsplit(":", 1)[1])
    try:
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=30) == 0
        assert port_is_free(api_port)
        assert port_is_free(running.aws_port)
    finally:
        if running.process.poll() is None:
            running.process.kill()


def test_bad_input_over_the_wire_is_a_clean_4xx_and_stores_nothing(stack: RunningStack) -> None:
    def bobs_order_ids() -> list[str]:
        page = requests.get(stack.url("/orders"), params={"limit": "100"}, headers=stack.auth("bob"), timeout=5)
        return [order["order_id"] for order in page.json()["items"]]

    before = bobs_order_ids()
    headers = {**stack.auth("bob"), "Idempotency-Key": "wire-1", "Content-Type": "application/json"}
    cases = {
        "malformed JSON": b'{"items": [',
        "unknown field": b'{"items": [{"sku": "BOOK-SRE", "quantity": 1}], "payment": {"token": "tok_visa"}, "x": 1}',
        "quantity past 64 bits": b'{"items": [{"sku": "BOOK-SRE", "quantity": 18446744073709551617}],'
        b' "payment": {"token": "tok_visa"}}',
    }
    for case, body in cases.items():
        response = requests.post(stack.url("/orders"), headers=headers, data=body, timeout=5)
        assert response.status_code == 400, case
        assert response.headers["Content-Type"].startswith("application/problem+json"), case
        assert response.json()["status"] == 400, case
    wrong_method = requests.delete(stack.url("/products/BOOK-SRE"), headers=stack.auth("admin"), timeout=5)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Content-Type"].startswith("application/problem+json")
    assert bobs_order_ids() == before
    assert requests.get(stack.url("/products/BOOK-SRE"), timeout=5).json()["available"] == 40


@pytest.mark.parametrize(
    ("what", "option"),
    [("the AWS emulator", "--aws-port"), ("the API", "--api-port"), ("the dev identity provider", "--identity-port")],
)
def test_a_taken_port_stops_the_stack_at_once_saying_which(tmp_path: Path, what: str, option: str) -> None:
    """moto's server binds in its own thread: on a taken port (LocalStack's, another checkout's stack)
    the thread died and the stack waited for it forever, deaf to Ctrl-C and SIGTERM; a taken API or
    identity port failed with a bare traceback once the stack was deployed."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        ports = {"--api-port": free_port(), "--aws-port": free_port(), "--identity-port": free_port(), option: port}
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
        environment["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'layers/shared/python'}"
        command = [sys.executable, "-m", "infra.local.stack", "--state-dir", str(tmp_path), "--no-seed"]
        command += [str(part) for pair in ports.items() for part in pair]
        try:
            stopped = subprocess.run(
                command,
                cwd=REPO_ROOT,
                env=environment,
                capture_output=True,
                text=True,
                timeout=STARTUP_DEADLINE_SECONDS,
            )
        except subprocess.TimeoutExpired as hung:
            raise AssertionError(f"the stack hung on the taken port {port}: {hung.output!r}") from hung
    assert stopped.returncode != 0
    assert f"the port of {what}, 127.0.0.1:{port}, is taken" in stopped.stderr, stopped.stderr
    assert "Traceback" not in stopped.stderr


def test_one_port_given_to_two_servers_stops_the_stack_at_once_saying_so(tmp_path: Path) -> None:
    """Each port was free on its own, so the check passed, and the second server failed with a traceback."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    environment["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'layers/shared/python'}"
    command = [sys.executable, "-m", "infra.local.stack", "--state-dir", str(tmp_path), "--no-seed"]
    command += ["--api-port", str(free_port()), "--aws-port", str(port), "--identity-port", str(port)]
    stopped = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=STARTUP_DEADLINE_SECONDS
    )
    assert stopped.returncode != 0
    assert f"the AWS emulator and the dev identity provider were both given port {port}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
