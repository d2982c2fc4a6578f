"""The layer ships what the tests ran: the requirements' pins, and the locks `make lock` writes.

boto3 and botocore are pinned together in requirements.txt: aws-xray-sdk (Powertools' tracer) pulls
botocore into the layer, and without boto3 beside it Lambda ran the runtime's own boto3 over the
layer's botocore, a pair no test had run. Their dependencies' dependencies are pinned too, in
requirements-dev.lock (what `make` installs here) and requirements.lock (what `make package` puts in
the layer, for Lambda's platform), each with its distributions' hashes.
"""

from __future__ import annotations

import re
from importlib.metadata import distributions, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A lock entry: "name==version \" at the start of a line, then its hashes on the lines that follow.
_LOCKED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})*)", re.MULTILINE)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(file: str) -> dict[str, str | None]:
    """The requirements of a requirements file: name -> its exact pin, None when it has none."""
    pins: dict[str, str | None] = {}
    for line in (ROOT / file).read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement and not requirement.startswith("-r"):
            name, _, pinned = requirement.partition("==")
            pins[_canonical(name.split("[")[0])] = pinned or None
    return pins


def _locked(file: str) -> dict[str, str]:
    text = (ROOT / file).read_text()
    entries = _LOCKED.findall(text)
    assert all(hashes for _, _, hashes in entries), f"{file}: an entry without its hashes"
    assert len(entries) == len(re.findall(r"^[A-Za-z0-9]", text, re.MULTILINE)), f"{file}: a line not read as an entry"
    return {_canonical(name): pinned for name, pinned, _ in entries}


def test_the_layer_pins_boto3_and_botocore_to_the_versions_the_tests_run() -> None:
    pins = _pins("requirements.txt")
    assert (pins.get("boto3"), pins.get("botocore")) == (version("boto3"), version("botocore"))


def test_every_requirement_is_exactly_pinned_at_runtime() -> None:
    assert [name for name, pinned in _pins("requirements.txt").items() if pinned is None] == []


def test_each_lock_holds_every_pin_of_its_requirements() -> None:
    """A requirement changed without `make lock` would install the old version: the lock is stale."""
    for requirements, lock in (
        ("requirements.txt", "requirements.lock"),
        ("requirements-dev.txt", "requirements-dev.lock"),
    ):
        locked = _locked(lock)
        pins = _pins(requirements)
        if requirements == "requirements-dev.txt":
            pins |= _pins("requirements.txt")
        # An unpinned requirement (types-requests) only has to be locked at some version.
        stale = {
            name: (pinned, locked.get(name))
            for name, pinned in pins.items()
            if name not in locked or pinned not in (None, locked[name])
        }
        assert stale == {}, f"{lock} is stale against {requirements} (requirement, locked): run make lock"


def test_the_layer_lock_is_the_dev_lock_s_versions() -> None:
    """The layer ships exactly the versions the tests ran."""
    dev = _locked("requirements-dev.lock")
    layer = _locked("requirements.lock")
    assert {name: (pinned, dev.get(name)) for name, pinned in layer.items() if dev.get(name) != pinned} == {}
    assert {"boto3", "botocore", "pydantic-core", "typing-extensions", "jmespath"} <= set(layer)


def test_this_environment_is_the_dev_lock() -> None:
    """`make` installed every locked package at its version (uv itself is pinned by the Makefile)."""
    installed = {_canonical(dist.metadata["Name"]): dist.version for dist in distributions()}
    locked = _locked("requirements-dev.lock")
    assert {
        name: (pinned, installed.get(name)) for name, pinned in locked.items() if installed.get(name) != pinned
    } == {}
