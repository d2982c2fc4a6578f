"""``make migrate``: finds a deployed stack's tables from the template's wiring and upgrades them
(moto's CloudFormation and DynamoDB stand in for the account)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra import migrate
from infra.local.template import load_template
from shop import aws, config
from shop.config import TableSettings

REGION = "eu-west-1"


def test_the_template_wires_every_table_the_shop_reads() -> None:
    wired = migrate.table_variables(load_template())
    assert {variable.lower() for variable in wired} >= set(TableSettings.model_fields)
    assert wired["ORDERS_TABLE"] == "OrdersTable"


def test_the_stack_and_region_come_from_what_the_guided_deploy_saved(tmp_path: Path) -> None:
    saved = tmp_path / "samconfig.toml"
    saved.write_text(
        'version = 0.1\n[default.deploy.parameters]\nstack_name = "shop"\nregion = "eu-west-1"\n'
        'capabilities = "CAPABILITY_IAM CAPABILITY_AUTO_EXPAND"\n'
    )
    assert migrate.saved_deploy_settings(saved) == {"stack_name": "shop", "region": "eu-west-1"}
    assert migrate.saved_deploy_settings(tmp_path / "absent.toml") == {}


@pytest.fixture
def account(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A mocked account; the environment and the cached clients and settings the run changes are put back."""
    for variable in [*migrate.table_variables(load_template()), "AWS_DEFAULT_REGION"]:
        monkeypatch.setenv(variable, "")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    aws.reset_clients()
    with mock_aws():
        yield boto3.client("cloudformation", region_name=REGION)
    aws.reset_clients()
    config.reset_settings_cache()


def _deploy_tables(cloudformation: Any, *, leave_out: str = "") -> dict[str, str]:
    """The template's tables (keys and indexes) as a stack of their own; logical id -> physical name."""
    tables = {
        logical_id: {
            "Type": resource["Type"],
            "Properties": {
                key: value
                for key, value in resource["Properties"].items()
                if key in ("KeySchema", "AttributeDefinitions", "BillingMode", "GlobalSecondaryIndexes")
            },
        }
        for logical_id, resource in load_template()["Resources"].items()
        if resource.get("Type") == "AWS::DynamoDB::Table" and logical_id != leave_out
    }
    cloudformation.create_stack(StackName="shop", TemplateBody=json.dumps({"Resources": tables}))
    resources = cloudformation.list_stack_resources(StackName="shop")["StackResourceSummaries"]
    return {resource["LogicalResourceId"]: resource["PhysicalResourceId"] for resource in resources}


def test_a_run_upgrades_the_deployed_stacks_tables_and_says_what_it_did(
    account: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tables = _deploy_tables(account)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    # A product as stored before 4ae6216: its stock on the item, no counter.
    product = {"sku": "OLD-1", "name": "Old", "category": "c", "price_amount": 500, "price_currency": "USD"}
    dynamodb.put_item(
        TableName=tables["ProductsTable"],
        Item={k: {"N": str(v)} if isinstance(v, int) else {"S": v} for k, v in product.items()}
        | {"available": {"N": "7"}},
    )

    assert migrate.main(["--stack", "shop", "--region", REGION, "--samconfig", str(tmp_path / "none.toml")]) == 0

    printed = capsys.readouterr().out
    assert "migrate: products' stock counters: 1 examined, 1 upgraded" in printed
    assert "migrate: orders' index keys: 0 examined, 0 upgraded" in printed
    counter = dynamodb.get_item(TableName=tables["StockTable"], Key={"sku": {"S": "OLD-1"}, "shard": {"N": "0"}})
    assert counter["Item"]["available"] == {"N": "7"}


def test_a_stack_without_the_shops_tables_is_refused_before_anything_is_written(account: Any, tmp_path: Path) -> None:
    _deploy_tables(account, leave_out="OrdersTable")
    with pytest.raises(SystemExit, match="has no table OrdersTable"):
        migrate.main(["--stack", "shop", "--region", REGION, "--samconfig", str(tmp_path / "none.toml")])


def test_no_stack_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        migrate.main(["--samconfig", str(tmp_path / "none.toml")])
    assert exit_.value.code == 2
    assert "no stack: pass --stack (make migrate STACK=<name>)" in capsys.readouterr().err


def test_a_stack_that_cannot_be_read_is_refused_with_aws_reason(account: Any, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"cannot read stack nowhere's resources: .*does not exist"):
        migrate.main(["--stack", "nowhere", "--region", REGION, "--samconfig", str(tmp_path / "none.toml")])
