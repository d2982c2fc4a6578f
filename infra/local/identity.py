"""The local stand-in for the Cognito user pool: a dev key pair and tokens with Cognito's claims.

The API verifies tokens with the same code everywhere: it fetches ``{issuer}/.well-known/jwks.json``
(with PyJWT's ``PyJWKClient``, which only reads http(s) URLs) and checks signature, expiry,
issuer and audience. On AWS the issuer is the user pool's provider URL; locally ``serve()``
publishes the JWKS over HTTP on 127.0.0.1 (a free port, a daemon thread) and the issuer is that
server's URL, ``http://127.0.0.1:<port>``. The signing key is kept in ``directory`` (under
``.local/`` for ``make run``) and reused, so it survives restarts.

For tests, ``jwks_hook`` (called on each JWKS request, returning the HTTP status to answer) can
fail or hold the endpoint, and ``jwks_requests`` counts the requests the server received.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

AUDIENCE = "shop-local-client"
KEY_ID = "shop-local-dev-key"
JWKS_PATH = "/.well-known/jwks.json"


@dataclass(eq=False)
class DevIdentityProvider:
    directory: Path
    private_key_pem: bytes
    audience: str = AUDIENCE
    # Test seam: called for each JWKS request (in the server's thread); the HTTP status to answer.
    jwks_hook: Callable[[], int] | None = None
    jwks_requests: int = field(default=0, init=False)
    _issuer: str | None = field(default=None, init=False, repr=False)
    _server: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)
    _counter_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def create(cls, directory: Path) -> DevIdentityProvider:
        """The provider with the dev key in ``directory`` (generated once, then reused); not serving yet."""
        directory.mkdir(parents=True, exist_ok=True)
        key_file = directory / "dev-signing-key.pem"
        if key_file.exists():
            pem = key_file.read_bytes()
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            key_file.write_bytes(pem)
            key_file.chmod(0o600)
        return cls(directory=directory, private_key_pem=pem)

    @property
    def issuer(self) -> str:
        """``http://127.0.0.1:<port>`` once ``serve()`` was called (still the same after ``close()``)."""
        if self._issuer is None:
            raise RuntimeError("the dev identity provider has no issuer until serve() is called")
        return self._issuer

    def jwks(self) -> dict[str, Any]:
        """The public key set the server publishes."""
        private_key = serialization.load_pem_private_key(self.private_key_pem, password=None)
        public_jwk = json.loads(RSAAlgorithm.to_jwk(private_key.public_key()))  # type: ignore[arg-type]
        public_jwk.update({"kid": KEY_ID, "use": "sig", "alg": "RS256"})
        return {"keys": [public_jwk]}

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Publish the JWKS over HTTP (port 0: a free one) from a daemon thread; returns the issuer URL."""
        if self._server is not None:
            return self.issuer
        body = json.dumps(self.jwks()).encode()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != JWKS_PATH:
                    self.send_error(404)
                    return
                with provider._counter_lock:
                    provider.jwks_requests += 1
                hook = provider.jwks_hook
                status = hook() if hook is not None else 200
                payload = body if status == 200 else json.dumps({"message": "unavailable"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the stack's console shows the API's access log only

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        # A short poll interval: close() (which waits for the loop to notice) returns promptly.
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="dev-identity-provider", daemon=True
        ).start()
        self._server = server
        self._issuer = f"http://{host}:{server.server_port}"
        return self._issuer

    def close(self) -> None:
        """Stop serving (the port is released; ``issuer`` keeps its value, so tokens still name it)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def token(
        self,
        username: str,
        *,
        groups: list[str] | None = None,
        expires_in: int = 12 * 3600,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> str:
        """An ID token shaped like Cognito's: ``sub``, ``cognito:username``, ``cognito:groups``."""
        now = int(time.time())
        claims = {
            "sub": username,
            "cognito:username": username,
            "cognito:groups": groups or [],
            "token_use": "id",
            "iss": issuer or self.issuer,
            "aud": audience or self.audience,
            "iat": now,
            "auth_time": now,
            "exp": now + expires_in,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self.private_key_pem, algorithm="RS256", headers={"kid": KEY_ID})
