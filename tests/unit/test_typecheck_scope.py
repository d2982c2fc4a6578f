"""`make typecheck` checks every Python file in the repository: its exclude patterns skip only what is
not ours (build output, npm packages, the local stack's state).

The pattern ".local/" (a regex: "." is any character) also matched infra/local/, and the sixteen
modules of the local stack went unchecked, with three type errors among them.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_no_tracked_python_file_is_excluded_from_mypy() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    patterns = [re.compile(pattern) for pattern in config["exclude"]]
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked, "git ls-files found no Python file"
    excluded = [path for path in tracked if any(pattern.search(path) for pattern in patterns)]
    assert excluded == []
