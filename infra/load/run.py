"""`make load`: Locust, headless and bounded, against a local stack it starts or a deployed stage.

    python -m infra.load.run [--mix shopper|flash|all] [--users 20] [--spawn-rate 5] [--duration 30s] [--host URL]

Without ``--host`` it starts `python -m infra.local.stack` (what `make run` starts) in a subprocess
on free ports, so it works while a `make run` stack is up, with its state in a temporary folder;
mints one customer token per user with the stack's dev identity provider; runs Locust; stops the
stack. With ``--host`` (a deployed stage's ApiUrl) the tokens come from ``LOAD_TOKENS`` (README).
Locust prints its table; the exit status is Locust's: non-zero when it recorded a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import jwt
import requests

from infra.local.identity import DevIdentityProvider
from infra.local.template import REPO_ROOT

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
# Locust's class picker: the user classes of each mix.
MIXES = {"shopper": ("Shopper",), "flash": ("FlashSaleShopper",), "all": ("Shopper", "FlashSaleShopper")}
STARTUP_DEADLINE_SECONDS = 120
# Past the duration, users finish the task they are in (an order is followed until it settles).
STOP_TIMEOUT_SECONDS = 60
CUSTOMER_PREFIX = "load-shopper"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mix", choices=sorted(MIXES), default="shopper")
    parser.add_argument("--users", type=int, default=20, help="concurrent Locust users")
    parser.add_argument("--spawn-rate", type=float, default=5, help="users started per second")
    parser.add_argument("--duration", default="30s", help="Locust's --run-time: 30s, 2m, 1h30m")
    parser.add_argument("--host", default="", help="a deployed stage's URL (default: start a local stack)")
    args = parser.parse_args(argv)
    if args.users < 1 or args.spawn_rate <= 0:
        parser.error("--users must be at least 1 and --spawn-rate above 0")
    if args.host and not args.host.startswith(("http://", "https://")):
        parser.error(f"--host (HOST=) must be an http(s) URL, not {args.host!r}")
    return args


def locust_command(
    *, mix: str, users: int, spawn_rate: float, duration: str, host: str, options: Sequence[str] = ()
) -> list[str]:
    """The headless Locust run: bounded by ``duration``, only the final table printed (``options``: Locust's)."""
    return [
        sys.executable,
        "-m",
        "locust",
        "--locustfile",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--users",
        str(users),
        "--spawn-rate",
        str(spawn_rate),
        "--run-time",
        duration,
        "--stop-timeout",
        str(STOP_TIMEOUT_SECONDS),
        "--host",
        host,
        *options,
        *MIXES[mix],
    ]


def mint_tokens(state_dir: Path, customers: list[str]) -> dict[str, object]:
    """Tokens for the local stack in ``state_dir``: its admin's, and one per customer name.

    The stack's dev identity provider keeps its signing key in ``state_dir/dev-idp``; the tokens
    name the issuer the stack's own admin token names (the provider's URL).
    """
    stack_tokens = json.loads((state_dir / "dev-tokens.json").read_text())
    issuer = jwt.decode(stack_tokens["admin"], options={"verify_signature": False})["iss"]
    identity = DevIdentityProvider.create(state_dir / "dev-idp")
    return {
        "admin": stack_tokens["admin"],
        "customers": {name: identity.token(name, issuer=issuer) for name in customers},
    }


def write_tokens(path: Path, tokens: dict[str, object]) -> Path:
    path.write_text(json.dumps(tokens, indent=2) + "\n")
    path.chmod(0o600)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def local_stack(state_dir: Path) -> Iterator[str]:
    """`python -m infra.local.stack` on free ports, its API's URL once /health answers; stopped after."""
    api_port, aws_port = _free_port(), _free_port()
    log_path = state_dir / "stack.log"
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "POWERTOOLS_"))}
    environment["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'layers/shared/python'}"
    command = [sys.executable, "-m", "infra.local.stack", "--api-port", str(api_port), "--aws-port", str(aws_port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*command, "--state-dir", str(state_dir)],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api_url = f"http://127.0.0.1:{api_port}"
    started = time.monotonic()
    try:
        deadline = started + STARTUP_DEADLINE_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the local stack exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local stack was not healthy in time:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)  # the readiness check's polling interval
        print(f"load: the local stack is up in {time.monotonic() - started:.0f} s ({api_url})", flush=True)
        yield api_url
    finally:
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(f"load: the local stack stopped in {time.monotonic() - stopping:.0f} s", flush=True)


def _run_locust(args: argparse.Namespace, host: str, tokens_path: Path | None) -> int:
    environment = dict(os.environ)
    if tokens_path is not None:
        environment["LOAD_TOKENS"] = str(tokens_path)
    command = locust_command(
        mix=args.mix, users=args.users, spawn_rate=args.spawn_rate, duration=args.duration, host=host
    )
    print(f"load: locust {' '.join(command[3:])}", flush=True)
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.host:
        if not os.environ.get("LOAD_TOKENS"):
            print(
                "load: against a deployed stage, LOAD_TOKENS must name a tokens file (README: make load)",
                file=sys.stderr,
            )
            return 2
        print(f"load: {args.mix} mix, {args.users} users for {args.duration} against {args.host}", flush=True)
        return _run_locust(args, args.host, None)

    with tempfile.TemporaryDirectory(prefix="shop-load-") as state:
        state_dir = Path(state)
        print("load: starting the local stack (python -m infra.local.stack) on free ports", flush=True)
        try:
            with local_stack(state_dir) as api_url:
                customers = [f"{CUSTOMER_PREFIX}-{index:03d}" for index in range(1, args.users + 1)]
                tokens_path = write_tokens(state_dir / "load-tokens.json", mint_tokens(state_dir, customers))
                print(f"load: {args.mix} mix, {args.users} users for {args.duration}", flush=True)
                return _run_locust(args, api_url, tokens_path)
        except RuntimeError as error:
            print(f"load: {error}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
