"""Write the lock files from the requirements files (`make lock`).

requirements.txt (the runtime: the API and every function, shipped in the shared layer) and
requirements-dev.txt (that, plus what runs, tests and packages locally) hold the versions the
project chooses. Their dependencies' dependencies are resolved here, once, into two lock files,
every package at one version with the hashes of its distributions:

- requirements-dev.lock: what `make` installs into .venv (Python 3.12, any platform);
- requirements.lock: what `make package` installs into the layer, for Lambda's platform,
  constrained to requirements-dev.lock, so the layer ships exactly the versions the tests ran.

uv keeps the versions an existing lock names unless a requirement no longer allows them, so
relocking after one change moves only what that change needs. ``--upgrade`` takes the newest
versions the requirements allow.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from infra.local.template import REPO_ROOT
from infra.package import LAMBDA_PLATFORM, LAMBDA_PYTHON

DEV_LOCK = "requirements-dev.lock"
LAYER_LOCK = "requirements.lock"


def _compile(source: str, output: str, *extra: str, upgrade: bool) -> None:
    uv = Path(sys.executable).parent / "uv"
    command = [
        str(uv),
        "pip",
        "compile",
        source,
        "--output-file",
        output,
        "--python-version",
        LAMBDA_PYTHON,
        "--generate-hashes",
        "--custom-compile-command",
        "make lock",
        "--quiet",
        *extra,
        *(["--upgrade"] if upgrade else []),
    ]
    print("+", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=REPO_ROOT)


def lock(*, upgrade: bool = False) -> None:
    _compile("requirements-dev.txt", DEV_LOCK, upgrade=upgrade)
    _compile(
        "requirements.txt", LAYER_LOCK, "--python-platform", LAMBDA_PLATFORM, "--constraint", DEV_LOCK, upgrade=upgrade
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="the newest versions the requirements allow")
    lock(upgrade=parser.parse_args().upgrade)


if __name__ == "__main__":
    main()
