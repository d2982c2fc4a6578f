"""Build the deployable stack into build/sam/ without touching AWS (`make package`).

1. `chalice package --merge-template infra/template.yaml` generates the API (APIHandler, RestAPI)
   and merges everything infra/template.yaml declares into one SAM template.
2. The artifacts the template points at are laid out beside it with the same relative paths as
   in the repository: functions/, statemachines/, and layers/shared/ with the runtime
   dependencies (requirements.txt) installed for the Lambda platform.

Deploy the result with the SAM CLI or plain CloudFormation:

    sam deploy --template-file build/sam/template.yaml --stack-name shop --resolve-s3 \\
        --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND

(`make deploy` runs it, guided the first time.) No parameter is required: the pagination key is
generated in Secrets Manager by the stack itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from infra.local.template import REPO_ROOT

OUTPUT = REPO_ROOT / "build" / "sam"
LAMBDA_PYTHON = "3.12"
LAMBDA_PLATFORM = "manylinux2014_x86_64"


def _run(*command: str) -> None:
    print("+", " ".join(command), flush=True)
    # Chalice wants a region to name ARNs in the template; the deploy picks the real one.
    environment = {"AWS_DEFAULT_REGION": "us-east-1", **os.environ}
    subprocess.run(command, check=True, cwd=REPO_ROOT, env=environment)


def build(output: Path = OUTPUT) -> Path:
    if output.exists():
        shutil.rmtree(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    _run(
        str(bin_dir / "chalice"),
        "package",
        # The `prod` stage: `dev` holds the local emulator's settings for `chalice local`
        # (.chalice/config.json), which must never reach the deployed function.
        "--stage",
        "prod",
        "--pkg-format",
        "cloudformation",
        "--template-format",
        "yaml",
        "--merge-template",
        "infra/template.yaml",
        str(output),
    )
    (output / "sam.yaml").rename(output / "template.yaml")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("functions", "statemachines"):
        shutil.copytree(REPO_ROOT / folder, output / folder, ignore=ignore)
    layer = output / "layers" / "shared"
    shutil.copytree(REPO_ROOT / "layers" / "shared", layer, ignore=ignore)
    _run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
        str(layer / "python"),
        "--platform",
        LAMBDA_PLATFORM,
        "--python-version",
        LAMBDA_PYTHON,
        "--implementation",
        "cp",
        "--only-binary=:all:",
        "-r",
        "requirements.txt",
    )
    print(f"packaged: {os.path.relpath(output / 'template.yaml', REPO_ROOT)}")
    return output / "template.yaml"


if __name__ == "__main__":
    build()
