"""The API platform: health, the OpenAPI document, problem+json for failures, and the local server's gateway answers."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from chalice.test import Client

from app import app
from infra.local.api_server import MAX_REQUEST_BYTES, create_api_server
from shop.config import ApiSettings, api_settings
from shop.domain import catalog as domain
from shop.errors import TransientError
from tests.conftest import LocalAws

PROBLEM = "application/problem+json"


@pytest.fixture
def client(local_aws: LocalAws) -> Iterator[Client]:
    # The packaged stage: dev's variables are chalice local's (.chalice/config.json).
    with Client(app, stage_name="prod") as test_client:
        yield test_client


def test_health(client: Client) -> None:
    response = client.http.get("/health")
    assert response.status_code == 200
    assert json.loads(response.body) == {"status": "ok"}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


# Every route of the public contract, and the fields of its Product, Order and Cart.
CONTRACT_ROUTES = {
    ("/health", "get"),
    ("/openapi.json", "get"),
    ("/products", "get"),
    ("/products", "post"),
    ("/products/{sku}", "get"),
    ("/products/{sku}", "patch"),
    ("/products/{sku}/stock-adjustments", "post"),
    ("/orders", "post"),
    ("/orders", "get"),
    ("/orders/{order_id}", "get"),
    ("/orders/{order_id}/cancel", "post"),
    ("/cart", "get"),
    ("/cart", "delete"),
    ("/cart/items/{sku}", "put"),
    ("/cart/merge", "post"),
    ("/admin/reconciliation", "get"),
    ("/ops", "get"),
}
CONTRACT_FIELDS = {
    "Product": {"sku", "name", "description", "category", "price", "available", "active"},
    "OrderView": {
        "order_id",
        "customer_id",
        "status",
        "failure_reason",
        "items",
        "total",
        "payment",
        "history",
        "created_at",
        "updated_at",
    },
    "OrderLine": {"sku", "name", "quantity", "unit_price", "line_total"},
    "PaymentView": {"status", "authorized", "captured", "refunded"},
    "HistoryEntry": {"step", "status", "at"},
    "CartView": {"items", "total", "expires_at"},
    "CartLineView": {"sku", "name", "quantity", "unit_price", "line_total", "available"},
    "Money": {"amount", "currency"},
}


def test_the_openapi_document_describes_the_routes_that_exist(client: Client) -> None:
    response = client.http.get("/openapi.json")
    assert response.status_code == 200
    document = json.loads(response.body)
    assert document["openapi"] == "3.1.0"
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert sorted(CONTRACT_ROUTES - documented) == []
    registered = {(path, method.lower()) for path, methods in app.routes.items() for method in methods}
    assert documented <= registered
    assert ("/products", "put") not in documented  # the 405 answers are not operations
    schemas = document["components"]["schemas"]
    assert {
        "CreateProductRequest",
        "UpdateProductRequest",
        "StockAdjustmentRequest",
        "Product",
        "ProductPage",
        "Problem",
        "Money",
    } <= set(schemas)
    for ref in _refs(document):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_the_openapi_document_describes_every_field_of_the_contract(client: Client) -> None:
    document = json.loads(client.http.get("/openapi.json").body)
    schemas = document["components"]["schemas"]
    for name, fields in CONTRACT_FIELDS.items():
        assert sorted(fields - set(schemas[name]["properties"])) == [], name
    order = document["paths"]["/orders/{order_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert order["schema"] == {"$ref": "#/components/schemas/OrderView"}


def test_the_openapi_document_carries_the_contract_rules(client: Client) -> None:
    paths = json.loads(client.http.get("/openapi.json").body)["paths"]
    listing = paths["/products"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert (limit["in"], limit["required"], limit["schema"]["minimum"], limit["schema"]["maximum"]) == (
        "query",
        False,
        1,
        100,
    )
    category = next(p for p in listing["parameters"] if p["name"] == "category")
    assert category["schema"]["type"] == "string"  # optional means absent, not null
    assert "security" not in listing
    create = paths["/products"]["post"]
    assert create["security"] == [{"bearerAuth": []}]
    assert {"201", "400", "401", "403", "409", "413", "415"} <= set(create["responses"])
    assert "Location" in create["responses"]["201"]["headers"]
    assert PROBLEM in create["responses"]["409"]["content"]
    sku = next(p for p in paths["/products/{sku}"]["get"]["parameters"] if p["name"] == "sku")
    assert sku["in"] == "path" and sku["schema"]["pattern"] == "^[A-Za-z0-9_-]{1,64}$"


def test_an_unexpected_failure_is_a_500_problem_without_internals(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(sku: str) -> None:
        raise RuntimeError("connection to 10.0.0.7 failed: password=hunter2")

    monkeypatch.setattr(domain, "get_product", broken)
    response = client.http.get("/products/A")
    assert response.status_code == 500
    assert response.headers["Content-Type"] == PROBLEM
    body = json.loads(response.body)
    assert body["status"] == 500 and {"type", "title", "detail"} <= set(body)
    assert "hunter2" not in response.body.decode() and "10.0.0.7" not in response.body.decode()


def test_a_server_side_validation_failure_is_a_500_not_the_callers_fault(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def misconfigured(sku: str) -> None:
        # e.g. a required setting missing from the function's environment
        ApiSettings.model_validate({})

    monkeypatch.setattr(domain, "get_product", misconfigured)
    response = client.http.get("/products/A")
    assert response.status_code == 500
    assert response.headers["Content-Type"] == PROBLEM
    assert "pagination_secret" not in response.body.decode()


def test_a_transient_failure_is_a_503_problem_to_retry(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(sku: str) -> None:
        raise TransientError("the catalog is busy; retry")

    monkeypatch.setattr(domain, "get_product", busy)
    response = client.http.get("/products/A")
    assert response.status_code == 503
    assert response.headers["Content-Type"] == PROBLEM and response.headers["Retry-After"] == "1"


def test_a_busy_table_is_a_503_that_names_no_service_while_the_log_says_which_and_how(
    client: Client, log_lines: io.StringIO
) -> None:
    """The caller is told to retry; which service refused, and its error code, are the operators'."""
    from shop import aws
    from tests.service.faults import SdkFault, inject

    with inject(aws.dynamodb(), SdkFault("GetItem", "ProvisionedThroughputExceededException")):
        response = client.http.get("/products/A")
    assert response.status_code == 503
    body = json.loads(response.body)
    assert body["detail"] == "the shop's records are busy; retry"
    assert "DynamoDB" not in response.body.decode() and "Exception" not in response.body.decode()
    [logged] = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert (logged["message"], logged["error"]) == ("request failed", "TransientError")
    assert logged["detail"] == "DynamoDB is busy (ProvisionedThroughputExceededException); retry"


def test_chalices_own_error_answers_are_problem_json(client: Client) -> None:
    # Chalice itself refuses a Content-Type the route does not accept, before any view runs.
    response = client.http.post("/products", headers={"Content-Type": "text/csv"}, body=b"a,b")
    assert response.status_code == 415
    assert response.headers["Content-Type"] == PROBLEM
    assert json.loads(response.body)["status"] == 415


def test_a_route_that_takes_no_body_ignores_its_content_type_and_declares_the_size_limit(
    client: Client, local_aws: LocalAws
) -> None:
    document = json.loads(client.http.get("/openapi.json").body)
    operations = [(path, method, item) for path, entry in document["paths"].items() for method, item in entry.items()]
    # Every request's body is limited, read or not; only a route that reads one refuses its type.
    assert all("413" in operation["responses"] for _, _, operation in operations)
    assert all(("415" in op["responses"]) == ("requestBody" in op) for _, _, op in operations)

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    listed = client.http.get("/products", headers=form)
    assert listed.status_code == 200, listed.body  # Chalice answered 415, a status the document did not declare
    oversized = client.http.get("/products", headers=form, body=b" " * (api_settings().max_body_bytes + 1))
    assert (oversized.status_code, json.loads(oversized.body)["status"]) == (413, 413)


def test_a_body_of_exactly_the_size_limit_is_taken(client: Client, local_aws: LocalAws) -> None:
    """The limit is what a body may be (``max_body_bytes``), inclusive: one byte more is 413."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    limit = api_settings().max_body_bytes

    at_the_limit = client.http.get("/products", headers=form, body=b" " * limit)

    assert at_the_limit.status_code == 200, at_the_limit.body
    assert client.http.get("/products", headers=form, body=b" " * (limit + 1)).status_code == 413


def test_a_chalice_error_answer_keeps_its_message_below_500_and_never_shows_it_for_a_5xx() -> None:
    """Chalice's own ``{"Code", "Message"}`` answers become problem+json: a 4xx's message is the detail, a
    5xx's is not (it can name the server's internals)."""
    from chalice.app import Response

    from chalicelib import http as shop_http

    def chalice_answer(status: int, message: str) -> dict[str, Any]:
        body = {"Code": "Error", "Message": message}
        answer = shop_http.problem_middleware(None, lambda _: Response(body=body, status_code=status))
        assert (answer.status_code, answer.headers["Content-Type"]) == (status, PROBLEM)
        problem: dict[str, Any] = json.loads(answer.body)
        return problem

    assert chalice_answer(404, "no such route")["detail"] == "no such route"
    internal = chalice_answer(502, "KeyError: 'table' in handler")
    assert internal["status"] == 502
    assert "KeyError" not in json.dumps(internal)


def test_a_chalice_client_error_raised_is_its_own_4xx_problem_from_400_on() -> None:
    from chalice import BadRequestError, NotFoundError

    from chalicelib import http as shop_http

    for error, status in ((BadRequestError("the body is malformed"), 400), (NotFoundError("no such thing"), 404)):
        answer = shop_http.problem_response(error)
        assert (answer.status_code, answer.headers["Content-Type"]) == (status, PROBLEM)
        assert json.loads(answer.body)["detail"] == str(error)


# ---------------------------------------------------------------------------- local server
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server(local_aws: LocalAws) -> Iterator[tuple[str, int]]:
    port = _free_port()
    local_server = create_api_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=local_server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", port
    finally:
        local_server.shutdown()
        local_server.server.server_close()
        thread.join(timeout=10)


def _request(
    address: tuple[str, int], method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_the_local_server_answers_an_unknown_path_with_a_404_problem(server: tuple[str, int]) -> None:
    for headers in ({}, {"Authorization": "Bearer something"}):
        status, response_headers, body = _request(server, "GET", "/no/such/route", headers)
        assert status == 404
        assert response_headers["content-type"] == PROBLEM
        assert response_headers["cache-control"] == "no-store"  # as the gateway's own answers say
        problem = json.loads(body)
        assert problem["status"] == 404 and {"type", "title", "detail"} <= set(problem)


def test_the_local_server_serves_the_app(server: tuple[str, int]) -> None:
    status, headers, body = _request(server, "GET", "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, headers, body = _request(server, "DELETE", "/health")
    assert status == 405 and headers["content-type"] == PROBLEM


@pytest.mark.parametrize("path", ["/products/MUG-1;x", "/products/MUG-1;"])
def test_the_local_server_keeps_a_semicolon_in_the_path_as_the_gateway_does(server: tuple[str, int], path: str) -> None:
    """API Gateway hands the path on as sent; chalice local's urlparse cut what follows a ";" off the
    last segment, so /products/MUG-1;x answered MUG-1 where the deployed API refuses the SKU."""
    from tests.service.orders_helpers import seed_product

    seed_product("MUG-1", price=1250, stock=10)
    assert _request(server, "GET", "/products/MUG-1")[0] == 200
    status, headers, body = _request(server, "GET", path)
    assert status == 400, body
    assert headers["content-type"] == PROBLEM
    [error] = json.loads(body)["errors"]
    assert error["field"] == "sku"


def test_the_local_server_refuses_a_body_over_the_gateway_limit_without_reading_it(server: tuple[str, int]) -> None:
    connection = http.client.HTTPConnection(*server, timeout=10)
    try:
        connection.putrequest("POST", "/products")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(MAX_REQUEST_BYTES + 1))
        connection.endheaders()  # no body is sent: the answer must not wait for it
        response = connection.getresponse()
        assert response.status == 413
        assert response.getheader("Content-Type") == PROBLEM
        assert response.getheader("Cache-Control") == "no-store"
        assert json.loads(response.read())["status"] == 413
    finally:
        connection.close()


@pytest.mark.parametrize("method", ["TRACE", "QUERY", "CONNECT", "PUT"])
def test_the_local_server_answers_an_unsupported_method_with_the_apis_405_problem(
    server: tuple[str, int], method: str
) -> None:
    # Not http.server's 501 HTML page: the same 405 + Allow the API answers for a wrong method.
    status, headers, body = _request(server, method, "/products")
    assert status == 405
    assert headers["content-type"] == PROBLEM and headers["allow"] == "GET, POST"
    problem = json.loads(body)
    assert problem["status"] == 405 and problem["type"] == "urn:shop:problem:method-not-allowed"
    assert method in problem["detail"]
    status, headers, body = _request(server, method, "/no/such/route")
    assert (status, headers["content-type"], json.loads(body)["status"]) == (404, PROBLEM, 404)


def test_the_local_server_answers_head_without_a_body(server: tuple[str, int]) -> None:
    connection = http.client.HTTPConnection(*server, timeout=10)
    try:
        connection.request("HEAD", "/products/A")
        response = connection.getresponse()
        assert response.status == 405 and response.getheader("Allow") == "GET, PATCH"
        assert response.read() == b""
        # The connection stays usable: no stray body precedes the next answer.
        connection.request("GET", "/health")
        assert json.loads(connection.getresponse().read()) == {"status": "ok"}
    finally:
        connection.close()


def test_what_the_local_server_refuses_by_itself_is_problem_json_too(server: tuple[str, int]) -> None:
    with socket.create_connection(server, timeout=10) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431")
    assert b"Content-Type: application/problem+json" in head
    assert json.loads(body)["status"] == 431


def _raw_exchange(server: tuple[str, int], request: bytes) -> tuple[bytes, bytes]:
    with socket.create_connection(server, timeout=10) as raw:
        raw.sendall(request)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        # "²" (latin-1 \xb2): str.isdigit() took it, int() did not, and the server closed without an answer.
        b"POST /products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: \xb2\r\nConnection: close\r\n\r\n{}",
        # A chunk size that is no hex number.
        b"PUT /cart/items/NOPE HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        # Two Content-Lengths that differ (RFC 9112, 6.3): it took the first and answered (a helper's probe).
        b"PUT /cart/items/NOPE HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 14\r\nContent-Length: 2\r\n\r\n" + b'{"quantity":1}',
    ],
    ids=["content-length-not-ascii", "chunk-size-not-hex", "two-content-lengths"],
)
def test_a_body_the_server_cannot_frame_is_a_400_problem(server: tuple[str, int], request_bytes: bytes) -> None:
    head, body = _raw_exchange(server, request_bytes)
    assert head.startswith(b"HTTP/1.1 400") and b"Content-Type: application/problem+json" in head
    assert json.loads(body)["status"] == 400


def test_a_chunked_body_reaches_the_app_as_on_the_gateway(server: tuple[str, int]) -> None:
    """The app saw no body (400 "a JSON body is required"), and the chunks were left to be read as the next request."""
    payload = b'{"quantity":1}'
    chunks = (
        b"5\r\n" + payload[:5] + b"\r\n" + f"{len(payload) - 5:x}".encode() + b"\r\n" + payload[5:] + b"\r\n0\r\n\r\n"
    )
    head, body = _raw_exchange(
        server,
        b"PUT /cart/items/NOPE HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks,
    )
    assert head.startswith(b"HTTP/1.1 422"), head  # the body arrived: the SKU is unknown
    assert json.loads(body)["type"] == "urn:shop:problem:product-unavailable"


def test_a_chunked_request_with_a_content_length_closes_the_connection(server: tuple[str, int]) -> None:
    """Read by its chunks, then the connection closes (RFC 9112, 6.1: a proxy in front may have framed
    it by the length, and what follows it is no request to trust). It stayed open (a helper's probe)."""
    payload = b'{"quantity":1}'
    head, _ = _raw_exchange(
        server,
        b"PUT /cart/items/NOPE HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(payload):x}".encode()
        + b"\r\n"
        + payload
        + b"\r\n0\r\n\r\n",
    )  # no Connection: close: it returns only because the server closed
    assert head.startswith(b"HTTP/1.1 422"), head


# ---------------------------------------------------------------------------- caching
def _cache_control(headers: Any) -> str:
    return {name.lower(): value for name, value in headers.items()}.get("cache-control", "")


def test_every_answer_but_the_catalogs_says_no_cache_may_keep_it(local_aws: LocalAws) -> None:
    """A 200 without Cache-Control is heuristically cacheable and keyed on the URL alone. GET /cart
    chosen by an X-Cart-Token (no Authorization, which would forbid a shared cache to store it) would
    have served the first anonymous shopper's cart to the next one."""
    from tests.service.orders_helpers import open_shop, seed_product

    seed_product("MUG-1", price=1250, stock=100)
    with open_shop(local_aws) as shop:
        http_client = shop.client.http
        put = http_client.put(
            "/cart/items/MUG-1", headers={"Content-Type": "application/json"}, body=json.dumps({"quantity": 2})
        )
        anonymous = {"X-Cart-Token": put.headers["X-Cart-Token"]}
        order = shop.place_ok([("MUG-1", 1)])
        answers = {
            "PUT /cart/items (anonymous)": put,
            "GET /cart (anonymous)": http_client.get("/cart", headers=anonymous),
            "GET /cart (customer)": http_client.get("/cart", headers=shop.headers("alice")),
            "GET /orders": http_client.get("/orders", headers=shop.headers("alice")),
            "GET /orders/{id}": http_client.get(f"/orders/{order['order_id']}", headers=shop.headers("alice")),
            "GET /admin/orders": http_client.get("/admin/orders", headers=shop.headers("admin")),
            "GET /orders/{id} (404)": http_client.get("/orders/no-such-order", headers=shop.headers("alice")),
            "GET /health": http_client.get("/health"),
            # 405s too, both kinds: a method routed to a fallback view, and one Chalice routes nowhere.
            "GET /cart/merge (405)": http_client.get("/cart/merge", headers=shop.headers("alice")),
            "PUT /products (405)": http_client.put("/products", headers=shop.headers("admin"), body=b"{}"),
            "HEAD /orders (405)": http_client.request("HEAD", "/orders", headers=shop.headers("alice")),
        }
        assert {name: _cache_control(answer.headers) for name, answer in answers.items()} == dict.fromkeys(
            answers, "no-store"
        )
        assert answers["GET /cart (anonymous)"].json_body["items"]
        assert {answer.status_code for name, answer in answers.items() if "(405)" in name} == {405}
        # The catalog keeps its own: cacheable by anyone for 30 s.
        assert _cache_control(http_client.get("/products/MUG-1").headers) == "public, max-age=30"


def test_the_openapi_document_states_every_answers_cache_control(client: Client) -> None:
    document = json.loads(client.http.get("/openapi.json").body)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith("2") or status == "304":
                    assert "Cache-Control" in response.get("headers", {}), (method, path, status)


# ---------------------------------------------------------------------------- metrics
def _published(printed: str, name: str) -> list[dict[str, Any]]:
    """The EMF lines (what CloudWatch reads from a function's output) that carry ``name``."""
    lines = [json.loads(line) for line in printed.splitlines() if line.startswith("{") and '"_aws"' in line]
    return [line for line in lines if name in line]


def test_the_api_publishes_the_metrics_it_recorded_before_it_answers(
    local_aws: LocalAws, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Powertools prints its buffer when flushed, or once a metric holds 100 values: the API never
    flushed, so a deferred saga start was published late, or lost with its container."""
    from shop import aws
    from tests.service.faults import SdkFault, inject
    from tests.service.orders_helpers import open_shop, seed_product

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    seed_product("MUG-1", price=1250, stock=10)
    with open_shop(local_aws) as shop:
        capfd.readouterr()
        with inject(aws.stepfunctions(), SdkFault("StartExecution", "ThrottlingException")):
            placed = shop.place([("MUG-1", 1)])  # stored, its saga left to the orphan sweeper
        printed = capfd.readouterr().out
    assert placed.status_code == 202, placed.body
    [line] = _published(printed, "SagaStartsDeferred")
    assert line["SagaStartsDeferred"] == [1.0]
    assert line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
