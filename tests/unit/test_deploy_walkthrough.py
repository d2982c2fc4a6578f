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


def test_the_tables_a_stack_delete_keeps_are_the_ones_the_walkthrough_names() -> None:
    """``sam delete`` leaves every table with DeletionPolicy Retain, billed: the README must name each one
    (it named four of the five: StockTable was left behind unmentioned)."""
    readme = (REPO_ROOT / "README.md").read_text()
    step = readme[readme.index("**8. Delete the stack") :]
    named = re.search(r"keeps the ([^*]+) tables\*\*", step)
    assert named, "step 8 names the tables it keeps"
    kept = {name.strip() for name in re.split(r",|\s+and\s+", named.group(1)) if name.strip()}
    retained = {
        logical_id.removesuffix("Table")
        for logical_id, resource in load_template()["Resources"].items()
        if resource.get("Type") == "AWS::DynamoDB::Table" and resource.get("DeletionPolicy") == "Retain"
    }
    assert kept == retained


def test_no_command_of_the_walkthrough_sets_only_aws_region() -> None:
    """SAM CLI never reads AWS_REGION; a walkthrough that sets only it deploys to us-east-1."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploying to AWS") : readme.index("### What the template sets up")]
    assert "AWS_DEFAULT_REGION" in section
    assert re.search(r"(?<!DEFAULT_)AWS_REGION=\.\.\.", section) is None
