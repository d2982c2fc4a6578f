"""Upgrade a deployed stack's stored items to the layout this version reads (``make migrate``).

    python -m infra.migrate [--stack NAME] [--region REGION] [--samconfig samconfig.toml]

``make deploy`` runs it after ``sam deploy``; it can run alone, at any time, while the shop
serves, and again: it changes only items still in an earlier layout (``shop.repositories.upgrades``
says which and why). The stack and region default to the answers ``sam deploy --guided`` saved.
The tables are found from the stack's resources, by the names the template's ``Globals`` give the
functions (``ORDERS_TABLE: !Ref OrdersTable``, ...): the template stays the only list of them.

Not upgraded: the payment simulator's records of before a55c0ff (one item per authorization since):
an authorization made by an earlier simulator can no longer be captured, voided or refunded. The
simulator is for trying the shop (README, "Deploying to AWS"), not for orders that must be refunded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from infra.local.template import REPO_ROOT, load_template
from shop import aws, config
from shop.repositories import upgrades

UPGRADES: dict[str, Callable[[], upgrades.Upgraded]] = {
    "orders' index keys": upgrades.upgrade_order_index_keys,
    "held reservations' expiry keys": upgrades.upgrade_held_keys,
    "products' stock counters": upgrades.upgrade_product_stock,
}


def table_variables(template: Mapping[str, Any]) -> dict[str, str]:
    """Environment variable -> the table's logical id, as the template's Globals wire them."""
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    tables = {
        name for name, resource in template["Resources"].items() if resource.get("Type") == "AWS::DynamoDB::Table"
    }
    return {
        variable: value["Ref"]
        for variable, value in variables.items()
        if isinstance(value, dict) and value.get("Ref") in tables
    }


def saved_deploy_settings(path: Path) -> dict[str, str]:
    """``stack_name`` and ``region`` from samconfig.toml's default deploy parameters, where saved."""
    if not path.is_file():
        return {}
    parameters = tomllib.loads(path.read_text()).get("default", {}).get("deploy", {}).get("parameters", {})
    return {key: str(parameters[key]) for key in ("stack_name", "region") if key in parameters}


def stack_tables(stack: str) -> dict[str, str]:
    """Environment variable -> the table's physical name in ``stack``."""
    physical: dict[str, str] = {}
    paginator = aws.client("cloudformation").get_paginator("list_stack_resources")
    for page in paginator.paginate(StackName=stack):
        for resource in page["StackResourceSummaries"]:
            physical[resource["LogicalResourceId"]] = resource["PhysicalResourceId"]
    wired = table_variables(load_template())
    missing = sorted(logical for logical in wired.values() if logical not in physical)
    if missing:
        raise SystemExit(f"migrate: stack {stack} has no table {', '.join(missing)}: is it this project's stack?")
    return {variable: physical[logical] for variable, logical in wired.items()}


def run() -> dict[str, upgrades.Upgraded]:
    """Every upgrade, against the tables the environment names (as on Lambda)."""
    return {name: upgrade() for name, upgrade in UPGRADES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samconfig", type=Path, default=REPO_ROOT / "samconfig.toml")
    parser.add_argument("--stack", help="the CloudFormation stack (default: samconfig.toml's stack_name)")
    parser.add_argument("--region", help="its region (default: samconfig.toml's, else the AWS CLI's)")
    args = parser.parse_args(argv)
    saved = saved_deploy_settings(args.samconfig)
    stack = args.stack or saved.get("stack_name")
    if not stack:
        parser.error("no stack: pass --stack (make migrate STACK=<name>), or deploy first (make deploy saves it)")
    region = args.region or saved.get("region")
    if region:
        os.environ["AWS_DEFAULT_REGION"] = region
    aws.reset_clients()
    try:
        tables = stack_tables(stack)
    except (BotoCoreError, ClientError) as error:  # no credentials, no such stack, no permission
        raise SystemExit(f"migrate: cannot read stack {stack}'s resources: {error}") from error
    os.environ.update(tables)
    config.reset_settings_cache()
    failed = False
    for name, done in run().items():
        print(f"migrate: {name}: {done.examined} examined, {done.changed} upgraded")
        if done.left:
            failed = True
            print(f"migrate: {name}: left as they are (changing, or an operator's to look at): {', '.join(done.left)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
