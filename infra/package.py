"""Build the deployable stack into build/sam/ without touching AWS (`make package`).

1. `chalice package --merge-template infra/template.yaml` generates the API (APIHandler, RestAPI)
   and merges everything infra/template.yaml declares into one SAM template. Chalice packages the
   API's own code only (app.py, chalicelib): its dependencies are the shared layer's, which every
   function, the API included, gets from the template's Globals. One copy of each wheel, built
   once, for one runtime.
2. The artifacts the template points at are laid out beside it with the same relative paths as
   in the repository: functions/, statemachines/, and layers/shared/ with the runtime
   dependencies installed for the Lambda platform by uv from requirements.lock (`make lock`):
   every package at the version the tests ran, its hashes checked.

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
import tempfile
from pathlib import Path

from infra.local.template import REPO_ROOT

OUTPUT = REPO_ROOT / "build" / "sam"
LAMBDA_PYTHON = "3.12"
# manylinux2014 is glibc 2.17, which Lambda's Amazon Linux 2023 exceeds.
LAMBDA_PLATFORM = "x86_64-manylinux_2_17"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def _run(*command: str, cwd: Path = REPO_ROOT, pythonpath: Path | None = None) -> None:
    print("+", " ".join(command), flush=True)
    # Chalice wants a region to name ARNs in the template; the deploy picks the real one.
    environment = {"AWS_DEFAULT_REGION": "us-east-1", **os.environ}
    if pythonpath is not None:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
    subprocess.run(command, check=True, cwd=cwd, env=environment)


def _package_api(output: Path) -> None:
    """Chalice's template and the API's zip, from a copy of the app without requirements.txt.

    Given the project root, Chalice would download and zip every runtime dependency into the API's
    own deployment package (half a minute, 26 MB) beside the layer that already carries them.
    """
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="shop-api-") as staging:
        app_dir = Path(staging)
        shutil.copy2(REPO_ROOT / "app.py", app_dir / "app.py")
        shutil.copytree(REPO_ROOT / "chalicelib", app_dir / "chalicelib", ignore=IGNORED)
        shutil.copytree(REPO_ROOT / ".chalice", app_dir / ".chalice", ignore=shutil.ignore_patterns("deployments"))
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
            str(REPO_ROOT / "infra" / "template.yaml"),
            str(output),
            cwd=app_dir,
            # Chalice imports the app to read its routes; the app imports the layer's `shop`.
            pythonpath=REPO_ROOT / "layers" / "shared" / "python",
        )


def _install_layer_dependencies(target: Path) -> None:
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        raise SystemExit(f"package: {uv} is missing; `make package` installs it (uv, in the project's venv)")
    _run(
        str(uv),
        "pip",
        "install",
        "--quiet",
        "--target",
        str(target),
        "--python-platform",
        LAMBDA_PLATFORM,
        "--python-version",
        LAMBDA_PYTHON,
        "--only-binary",
        ":all:",
        "-r",
        str(REPO_ROOT / "requirements.lock"),
    )


def build(output: Path = OUTPUT) -> Path:
    if output.exists():
        shutil.rmtree(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _package_api(output)
    (output / "sam.yaml").rename(output / "template.yaml")
    for folder in ("functions", "statemachines"):
        shutil.copytree(REPO_ROOT / folder, output / folder, ignore=IGNORED)
    layer = output / "layers" / "shared"
    shutil.copytree(REPO_ROOT / "layers" / "shared", layer, ignore=IGNORED)
    _install_layer_dependencies(layer / "python")
    print(f"packaged: {os.path.relpath(output / 'template.yaml', REPO_ROOT)}")
    return output / "template.yaml"


if __name__ == "__main__":
    build()
