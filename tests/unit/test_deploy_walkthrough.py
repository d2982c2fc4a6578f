"""The README's deploy walkthrough reads the stack's outputs by name: each must exist."""

from __future__ import annotations

import re

from infra.local.template import load_template
from tests.conftest import REPO_ROOT

# Outputs `chalice package` adds to the merged template.
CHALICE_OUTPUTS = {"EndpointURL", "RestAPIId", "APIHandlerName", "APIHandlerArn"}


def test_every_output_the_walkthrough_reads_is_declared() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploying to AWS") :]
    read = set(re.findall(r"\$\(output (\w+)\)", section))
    declared = set(load_template()["Outputs"]) | CHALICE_OUTPUTS

    assert {"ApiUrl", "UserPoolId", "UserPoolClientId", "AlarmTopicArn"} <= read
    assert sorted(read - declared) == []
