"""The shop's HTTP API (Chalice): route registration only; the routes live in chalicelib/.

Register every blueprint BEFORE ``http.install(app)``: it adds the problem+json middleware and
answers 405 for each method a registered path does not implement.
"""

from __future__ import annotations

from typing import Any, Literal

from chalice import Chalice
from pydantic import BaseModel

from chalicelib import http, openapi
from chalicelib.admin import admin
from chalicelib.carts import carts
from chalicelib.catalog import catalog
from chalicelib.console import console
from chalicelib.orders import orders

app = Chalice(app_name="shop")

app.register_blueprint(catalog)
app.register_blueprint(orders)
app.register_blueprint(carts)
app.register_blueprint(admin)
app.register_blueprint(console)


class Health(BaseModel):
    status: Literal["ok"]


@http.route(app, "/health", "GET", summary="Liveness", responses={200: Health}, tags=("meta",), backend=False)
def health() -> Health:
    return Health(status="ok")


@http.route(
    app,
    "/openapi.json",
    "GET",
    summary="This API's OpenAPI 3.1 document",
    responses={200: openapi.OpenApiDocument},
    tags=("meta",),
    backend=False,
)
def openapi_document() -> dict[str, Any]:
    return api_document()


def api_document() -> dict[str, Any]:
    """The document ``GET /openapi.json`` serves; ``openapi.json`` in the repository is a copy (``make schemas``)."""
    return openapi.document(app, title="Serverless shop API", version="1.0.0")


http.install(app)
