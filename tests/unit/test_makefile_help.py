"""`make help` lists every target the Makefile declares, each on a line of its own."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT

MAKEFILE = REPO_ROOT / "Makefile"


def phony_targets() -> set[str]:
    targets: set[str] = set()
    for line in MAKEFILE.read_text().splitlines():
        if line.startswith(".PHONY:"):
            targets.update(line.removeprefix(".PHONY:").split())
    return targets


def help_lines() -> dict[str, str]:
    """Each target `make help` describes, to its description."""
    shown = subprocess.run(
        ["make", "--no-print-directory", "-s", "help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {
        match["target"]: match["description"]
        for match in re.finditer(r"^make (?P<target>[\w-]+) +(?P<description>\S.*)$", shown, re.MULTILINE)
    }


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_help_describes_every_phony_target() -> None:
    targets = phony_targets()
    described = help_lines()

    assert {"help", "run", "test", "deploy"} <= targets
    assert sorted(targets - described.keys()) == []
    assert sorted(described.keys() - targets) == []


def test_make_run_serves_the_contracts_ports_and_port_overrides_the_apis(monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract's local run: the API on 127.0.0.1:8000 (PORT overrides it), the emulator on 4566,
    the dev tokens in .local/dev-tokens.json. (Tests bind free ports instead, so this reads the defaults.)"""
    from infra.local.stack import _parse_args

    monkeypatch.delenv("PORT", raising=False)
    defaults = _parse_args([])
    assert (defaults.host, defaults.api_port, defaults.aws_port) == ("127.0.0.1", 8000, 4566)
    assert defaults.state_dir == REPO_ROOT / ".local"
    monkeypatch.setenv("PORT", "9000")
    assert _parse_args([]).api_port == 9000
