from tests.conftest import LocalAws


def test_template_tables_are_deployed(local_aws: LocalAws) -> None:
    names = set(local_aws.client("dynamodb").list_tables()["TableNames"])
    assert set(local_aws.stack.table_names.values()) <= names
    ttl = local_aws.client("dynamodb").describe_time_to_live(TableName=local_aws.table("ReservationsTable"))
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "purge_at"


def test_api_environment_comes_from_the_template(local_aws: LocalAws) -> None:
    env = local_aws.stack.api_environment
    assert env["PRODUCTS_TABLE"] == local_aws.table("ProductsTable")
    assert env["AUTH_ISSUER"] == local_aws.identity.issuer
