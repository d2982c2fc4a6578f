"""The API's log lines carry Lambda's request id and API Gateway's, as on Lambda (chalicelib.http.install)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from chalice import Chalice
from pydantic import BaseModel

from chalicelib import http
from shop.observability import logger


@dataclass
class LambdaContext:
    aws_request_id: str
    function_name: str = "shop-APIHandler"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:shop-APIHandler"


def api_gateway_event(path: str, request_id: str) -> dict[str, Any]:
    """A REST API proxy event, as API Gateway hands it to the function."""
    return {
        "resource": path,
        "path": path,
        "httpMethod": "GET",
        "headers": {},
        "multiValueHeaders": {},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": path,
            "httpMethod": "GET",
            "requestId": request_id,
            "stage": "api",
            "identity": {"sourceIp": "203.0.113.7"},
        },
        "body": None,
        "isBase64Encoded": False,
    }


@pytest.fixture(autouse=True)
def body_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # The problem middleware reads only the body size limit of the API's settings.
    monkeypatch.setattr(http, "api_settings", lambda: SimpleNamespace(max_body_bytes=64 * 1024))


class Done(BaseModel):
    done: bool


def app_that_logs() -> Chalice:
    app = Chalice(app_name="request-ids")

    @http.route(app, "/work", "GET", summary="Logs a line", responses={200: Done}, backend=False)
    def work() -> Done:
        logger().warning("working")
        return Done(done=True)

    @http.route(app, "/fail", "GET", summary="Fails unexpectedly", responses={200: Done}, backend=False)
    def fail() -> Done:
        raise RuntimeError("boom")

    http.install(app)
    return app


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_logged_by_a_view_carries_both_request_ids(log_lines: io.StringIO) -> None:
    app = app_that_logs()

    response = app(api_gateway_event("/work", "apigw-1"), LambdaContext(aws_request_id="lambda-1"))

    assert response["statusCode"] == 200
    (line,) = [record for record in records(log_lines) if record["message"] == "working"]
    assert line["function_request_id"] == "lambda-1"
    assert line["correlation_id"] == "apigw-1"
    assert line["function_name"] == "shop-APIHandler"


def test_the_problem_middlewares_error_line_carries_them_and_the_next_request_has_its_own(
    log_lines: io.StringIO,
) -> None:
    app = app_that_logs()

    failed = app(api_gateway_event("/fail", "apigw-2"), LambdaContext(aws_request_id="lambda-2"))
    app(api_gateway_event("/work", "apigw-3"), LambdaContext(aws_request_id="lambda-3"))

    assert failed["statusCode"] == 500
    by_message = {record["message"]: record for record in records(log_lines)}
    assert by_message["unhandled error"]["function_request_id"] == "lambda-2"
    assert by_message["unhandled error"]["correlation_id"] == "apigw-2"
    assert (by_message["working"]["function_request_id"], by_message["working"]["correlation_id"]) == (
        "lambda-3",
        "apigw-3",
    )


def test_lines_after_the_request_carry_no_request_id(log_lines: io.StringIO) -> None:
    app = app_that_logs()
    app(api_gateway_event("/work", "apigw-4"), LambdaContext(aws_request_id="lambda-4"))

    logger().warning("between requests")

    (line,) = [record for record in records(log_lines) if record["message"] == "between requests"]
    # Not the finished request's ids. (A Lambda handler run earlier in this process, as the service
    # tier's in-process functions are, leaves its own context keys on the shared Powertools logger,
    # as it would on Lambda: absence cannot be asserted, only that this request's ids are gone.)
    assert line.get("function_request_id") != "lambda-4"
    assert line.get("correlation_id") != "apigw-4"
