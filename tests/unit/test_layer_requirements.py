"""The layer ships the AWS SDK the tests run: boto3 and botocore pinned in requirements.txt, together.

aws-xray-sdk (Powertools' tracer) pulls botocore into the layer; without boto3 beside it, Lambda ran
the runtime's own boto3 over the layer's botocore, a pair no test had run.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"


def _pins() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            assert "==" in requirement, f"not an exact pin: {requirement}"
            name, pinned = requirement.split("==")
            pins[name.split("[")[0].lower()] = pinned
    return pins


def test_the_layer_pins_boto3_and_botocore_to_the_versions_the_tests_run() -> None:
    pins = _pins()
    assert (pins.get("boto3"), pins.get("botocore")) == (version("boto3"), version("botocore"))


def test_every_runtime_requirement_is_the_version_installed_here() -> None:
    assert {name: pinned for name, pinned in _pins().items() if version(name) != pinned} == {}
