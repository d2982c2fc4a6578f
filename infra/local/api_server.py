"""The local HTTP server for the Chalice app, with API Gateway's own answers as the template declares them.

``chalice local`` answers a path without a route with API Gateway's default 403 "Missing
Authentication Token". The deployed API answers with the template's Gateway Responses instead
(the ``GatewayResponses`` of the ``RestAPI`` in infra/template.yaml), so this server renders those
same entries: status, headers and response template. It also refuses bodies over API Gateway's
10 MB limit without reading them (REQUEST_TOO_LARGE), as the gateway would.

Every method reaches the app, not only those http.server has a ``do_*`` handler for: an unsupported
one (TRACE, QUERY, ...) on a known path is the app's 405 problem with ``Allow``, as a wrong method
is on the deployed API, never http.server's 501 HTML page; on an unknown path it is the gateway's
404. Whatever http.server refuses by itself (a malformed request line, oversized headers) is
problem+json too, and a HEAD answer carries no body.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from chalice import Chalice
from chalice.config import Config
from chalice.local import (
    ChaliceRequestHandler,
    CustomLocalChalice,
    ForbiddenError,
    LambdaEventConverter,
    LocalChalice,
    LocalDevServer,
    LocalGateway,
    LocalGatewayException,
    MatchResult,
    RouteMatcher,
    ThreadedHTTPServer,
)

from infra.local.template import API_HANDLER, function_properties, load_template

# The logical id Chalice gives the REST API; infra/template.yaml merges its GatewayResponses in.
REST_API = "RestAPI"
# API Gateway's REST API payload limit.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
_DECIMAL = re.compile(r"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,8}")
# A chunk-size line (with extensions) or a trailer line: longer is no request a client means.
_MAX_CHUNK_LINE = 4096


@dataclass(frozen=True)
class GatewayResponse:
    status: int
    headers: dict[str, str]
    template: str

    def render(self, message: str, request_id: str) -> tuple[int, dict[str, str], bytes]:
        """The answer, with the ``$context`` variables the templates use filled in."""
        body = (
            self.template.replace("$context.error.messageString", json.dumps(message))
            .replace("$context.error.message", message)
            .replace("$context.requestId", request_id)
        )
        return self.status, dict(self.headers), body.encode("utf-8")


_DEFAULT_STATUS = {"DEFAULT_4XX": 400, "DEFAULT_5XX": 500, "MISSING_AUTHENTICATION_TOKEN": 403}
# An HTTP method name (RFC 9110's token), as it can follow "do_".
_METHOD_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


@lru_cache(maxsize=1)
def gateway_responses() -> Mapping[str, GatewayResponse]:
    """The template's Gateway Responses by ResponseType (SAM's ``GatewayResponses`` shape)."""
    declared: dict[str, dict[str, Any]] = load_template()["Resources"][REST_API]["Properties"]["GatewayResponses"]
    responses = {}
    for response_type, properties in declared.items():
        # Header values are mapping expressions; a static value is quoted: "'application/problem+json'".
        headers = {
            name: str(value).strip("'")
            for name, value in properties.get("ResponseParameters", {}).get("Headers", {}).items()
        }
        responses[response_type] = GatewayResponse(
            status=int(properties.get("StatusCode", _DEFAULT_STATUS.get(response_type, 400))),
            headers=headers,
            template=properties.get("ResponseTemplates", {}).get(
                "application/json", '{"message": $context.error.messageString}'
            ),
        )
    return responses


def _gateway_answer(response_type: str, message: str) -> tuple[int, dict[str, str], bytes]:
    responses = gateway_responses()
    fallback = "DEFAULT_5XX" if response_type.startswith(("INTEGRATION", "DEFAULT_5")) else "DEFAULT_4XX"
    response = responses.get(response_type) or responses[fallback]
    return response.render(message, str(uuid.uuid4()))


class _BadChunks(ValueError):
    """A chunked request body that is not one (a chunk size that is no hex number, a missing CRLF)."""


class _PathAsSent(RouteMatcher):
    """API Gateway matches and hands on the path as sent. chalice local's urlparse takes what follows a
    ";" in the last segment for "parameters" and drops it: /products/A;x answered product A."""

    def match_route(self, url: str) -> MatchResult:
        split = urlsplit(url)
        # Reversibly escaped ("%" first), so urlparse finds no ";" and each captured value comes back exact.
        escaped = split.path.replace("%", "%25").replace(";", "%3B")
        matched = super().match_route(escaped + (f"?{split.query}" if split.query else ""))
        captured = {name: _ESCAPED.sub(_unescape, value) for name, value in matched.captured.items()}
        return MatchResult(matched.route, captured, matched.query_params)


_ESCAPED = re.compile("%(25|3B)")


def _unescape(escape: re.Match[str]) -> str:
    return "%" if escape.group(1) == "25" else ";"


class GatewayRequestHandler(ChaliceRequestHandler):
    """chalice local's request handler, answering like the deployed gateway where they differ."""

    # A chunked request's body, read whole before the app sees it (chalice local reads Content-Length only).
    _dechunked: bytes | None = None
    _gateway: LocalGateway

    @property
    def local_gateway(self) -> LocalGateway:
        return self._gateway

    @local_gateway.setter
    def local_gateway(self, gateway: LocalGateway) -> None:
        # ChaliceRequestHandler builds its gateway, with chalice's route matcher, before it handles the request.
        gateway.event_converter = LambdaEventConverter(
            _PathAsSent(list(gateway._app_object.routes)), gateway._app_object.api.binary_types
        )
        self._gateway = gateway

    def _handle_with_gateway_rules(self) -> None:
        self._dechunked = None
        lengths = set(self.headers.get_all("content-length") or [])
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            # Framed by its chunks; with a Content-Length too, the connection closes after the answer
            # (RFC 9112, 6.1: what follows may be framed otherwise by a proxy in front; smuggling).
            if lengths:
                self.close_connection = True
            self._read_chunked_body()
            return
        if len(lengths) > 1:
            # Two lengths: the framing is invalid, and what comes after it unknowable (RFC 9112, 6.3).
            self.close_connection = True
            self._send_gateway_answer("DEFAULT_4XX", "Invalid Content-Length")
            return
        length = self.headers.get("content-length", "0")
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses, and the server dropped the connection.
        if not _DECIMAL.fullmatch(length):
            self._send_gateway_answer("DEFAULT_4XX", "Invalid Content-Length")
            return
        if int(length) > MAX_REQUEST_BYTES:
            self._refuse_too_large()
            return
        self._generic_handle()

    def _refuse_too_large(self) -> None:
        # Refused before reading (all of) it: the connection is closed, so the unread body is never used.
        self.close_connection = True
        self._send_gateway_answer("REQUEST_TOO_LARGE", "Request Too Long")

    def _read_chunked_body(self) -> None:
        """API Gateway takes a chunked request whole; so does this server (it used to drop the body)."""
        body = bytearray()
        try:
            while True:
                size_line = self.rfile.readline(_MAX_CHUNK_LINE)
                size_text = size_line.split(b";", 1)[0].strip()
                if not _HEX.fullmatch(size_text):
                    raise _BadChunks(size_line[:40].decode("latin-1"))
                size = int(size_text, 16)
                if size == 0:
                    while self.rfile.readline(_MAX_CHUNK_LINE).strip():
                        pass  # trailers: nothing of them reaches the app, as on the gateway
                    break
                if len(body) + size > MAX_REQUEST_BYTES:
                    self._refuse_too_large()
                    return
                body += self.rfile.read(size)
                if self.rfile.readline(_MAX_CHUNK_LINE).strip():
                    raise _BadChunks("no CRLF after a chunk")
        except _BadChunks:
            self.close_connection = True
            self._send_gateway_answer("DEFAULT_4XX", "Invalid chunked body")
            return
        self._dechunked = bytes(body)
        self._generic_handle()

    def _parse_payload(self) -> tuple[dict[str, str], bytes | None]:
        if self._dechunked is None:
            return super()._parse_payload()
        headers = {name: value for name, value in self.headers.items() if name.lower() != "transfer-encoding"}
        headers["Content-Length"] = str(len(self._dechunked))
        return headers, self._dechunked or None

    # BaseHTTPRequestHandler dispatches to do_<METHOD>.
    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _handle_with_gateway_rules  # noqa: N815

    def __getattr__(self, name: str) -> Any:
        # Any other method (TRACE, CONNECT, QUERY, ...): the app answers it, as for the ones above,
        # instead of http.server's 501 HTML page.
        if name.startswith("do_") and _METHOD_TOKEN.fullmatch(name[3:]):
            return self._handle_with_gateway_rules
        raise AttributeError(name)

    def _send_http_response(self, code: int, headers: Any, body: str | bytes | None) -> None:
        if self.command == "HEAD" and body is not None:
            # A HEAD answer has the headers of the full answer and no body.
            payload = body.encode("utf-8") if isinstance(body, str) else body
            headers = {**headers, "Content-Length": str(len(payload))}
            content_type = headers.pop("Content-Type", "application/json")
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self._send_headers(headers)
            return
        super()._send_http_response(code, headers, body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """What http.server refuses by itself (bad request line, headers too large): problem+json, not HTML."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        slug = re.sub(r"[^a-z0-9]+", "-", phrase.lower()).strip("-")
        body = json.dumps(
            {"type": f"urn:shop:problem:{slug}", "title": phrase, "status": code, "detail": message or phrase}
        ).encode("utf-8")
        self.close_connection = True
        self.send_response(code, message)
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _send_error_response(self, error: LocalGatewayException) -> None:
        if isinstance(error, ForbiddenError):
            # chalice local raises this only for a path that matches no route.
            self._send_gateway_answer("MISSING_AUTHENTICATION_TOKEN", "Missing Authentication Token")
            return
        super()._send_error_response(error)

    def _send_gateway_answer(self, response_type: str, message: str) -> None:
        status, headers, body = _gateway_answer(response_type, message)
        if self.close_connection:
            headers["Connection"] = "close"
        self._send_http_response(status, headers, body)


class _ApiHttpServer(ThreadedHTTPServer):
    # http.server's default backlog of 5 resets connections under a burst of concurrent clients
    # (the HTTP tier's 40 simultaneous checkouts); API Gateway accepts them all.
    request_queue_size = 128


class _QuietRequestHandler(GatewayRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return  # no access log: `make bench` and `make chaos` send thousands of requests


def create_api_server(app: Chalice, host: str, port: int, *, access_log: bool = True) -> LocalDevServer:
    """A threaded local server for ``app`` (no autoreload); ``serve_forever()`` / ``shutdown()``."""
    if not isinstance(app, LocalChalice):
        # What chalice.local.create_local_server does: give each server thread its own
        # current_request (Chalice keeps it on the app object).
        CustomLocalChalice.__bases__ = (LocalChalice, app.__class__)
        app.__class__ = CustomLocalChalice
    # The API function's limits as the template deploys them.
    function = function_properties(load_template(), API_HANDLER)
    config = Config.create(
        app_name=app.app_name, lambda_timeout=function["Timeout"], lambda_memory_size=function["MemorySize"]
    )
    handler = GatewayRequestHandler if access_log else _QuietRequestHandler
    return LocalDevServer(app, config, host, port, handler_cls=handler, server_cls=_ApiHttpServer)
