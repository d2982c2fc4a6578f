"""The layers of the shared package: AWS sits behind the repositories.

- ``shop.models`` (the boundaries' pydantic models) is pure: importing it loads no AWS SDK, so a
  model can be used by anything, a client generator or a test, without AWS.
- ``shop.domain`` (the rules) never imports the AWS SDK itself; it calls the repositories.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SHOP = Path(__file__).resolve().parents[2] / "layers" / "shared" / "python" / "shop"
AWS_SDK = ("boto3", "botocore", "aioboto3", "aiobotocore")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_domain_and_the_models_never_import_the_aws_sdk_themselves() -> None:
    offenders = {
        str(path.relative_to(SHOP)): sorted(name for name in _imported_modules(path) if name.split(".")[0] in AWS_SDK)
        for package in ("domain", "models")
        for path in sorted((SHOP / package).glob("*.py"))
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_importing_every_model_loads_no_aws_sdk() -> None:
    modules = sorted(f"shop.models.{path.stem}" for path in (SHOP / "models").glob("*.py") if path.stem != "__init__")
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {AWS_SDK!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(SHOP.parent)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout
