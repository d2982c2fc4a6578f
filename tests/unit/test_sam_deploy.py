"""`make deploy`'s SAM CLI step (infra/sam_deploy.sh), against a stand-in `sam` on PATH that keeps
SAM CLI's rule that an explicit ``--config-file`` must exist (samcli/cli/cli_config_file.py), and
records how it was called. Before, the first deploy named a config file that did not exist yet, and
SAM CLI refused it: `sam deploy --guided` never started."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "infra" / "sam_deploy.sh"
# $SAVES: what the guided run writes into the config file before it ends with $EXIT.
FAKE_SAM = """#!/bin/sh
config=""
previous=""
for argument in "$@"; do
    [ "$previous" = "--config-file" ] && config="$argument"
    previous="$argument"
done
if [ -n "$config" ] && [ ! -f "$config" ]; then
    echo "Error: Config file $config does not exist or could not be read!" >&2
    exit 1
fi
echo "$@" >> "$CALLS"
case " $* " in *" --guided "*) printf '%s' "$SAVES" > "$config" ;; esac
exit "$EXIT"
"""


def deploy(tmp_path: Path, *, saves: str, exit_code: int) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sam").write_text(FAKE_SAM)
    (bin_dir / "sam").chmod(0o755)
    environment = os.environ | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls"),
        "SAVES": saves,
        "EXIT": str(exit_code),
    }
    return subprocess.run(
        ["sh", str(SCRIPT), str(tmp_path / "samconfig.toml"), "build/sam/template.yaml"],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_the_first_deploy_is_guided_and_later_ones_reuse_its_answers(tmp_path: Path) -> None:
    first = deploy(tmp_path, saves='version = 0.1\n[default.deploy.parameters]\nstack_name = "shop"\n', exit_code=0)

    assert first.returncode == 0, first.stderr
    assert "--guided" in calls(tmp_path)[0] and "CAPABILITY_IAM" in calls(tmp_path)[0]
    assert 'stack_name = "shop"' in (tmp_path / "samconfig.toml").read_text()

    later = deploy(tmp_path, saves="", exit_code=0)

    assert later.returncode == 0, later.stderr
    assert "--guided" not in calls(tmp_path)[1] and str(tmp_path / "samconfig.toml") in calls(tmp_path)[1]
    # Nothing changed since the last deploy is no error: make deploy goes on to make migrate.
    assert "--no-fail-on-empty-changeset" in calls(tmp_path)[1]


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_a_guided_deploy_that_saved_nothing_is_guided_again_next_time(tmp_path: Path) -> None:
    aborted = deploy(tmp_path, saves="", exit_code=1)  # e.g. no credentials: SAM saves nothing

    assert aborted.returncode == 1
    assert not (tmp_path / "samconfig.toml").exists()
    assert "--guided" in calls(tmp_path)[0]

    again = deploy(tmp_path, saves="", exit_code=1)

    assert again.returncode == 1 and "--guided" in calls(tmp_path)[1]
