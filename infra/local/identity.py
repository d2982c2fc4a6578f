"""The local stand-in for the Cognito user pool: a dev key pair and tokens with Cognito's claims.

The API verifies tokens with the same code everywhere: it fetches ``{issuer}/.well-known/jwks.json``
and checks signature, expiry, issuer and audience. On AWS the issuer is the user pool's
provider URL; locally it is a ``file://`` URL of the folder this module writes, so the JWKS is
read from disk through the same ``urlopen`` call.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

AUDIENCE = "shop-local-client"
KEY_ID = "shop-local-dev-key"


@dataclass(frozen=True)
class DevIdentityProvider:
    directory: Path
    private_key_pem: bytes

    @property
    def issuer(self) -> str:
        return self.directory.resolve().as_uri()

    audience: str = AUDIENCE

    @classmethod
    def create(cls, directory: Path) -> DevIdentityProvider:
        """Generate (or reuse) the dev key in ``directory`` and publish its JWKS there."""
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
        provider = cls(directory=directory, private_key_pem=pem)
        provider._publish_jwks()
        return provider

    def _publish_jwks(self) -> None:
        private_key = serialization.load_pem_private_key(self.private_key_pem, password=None)
        public_jwk = json.loads(RSAAlgorithm.to_jwk(private_key.public_key()))  # type: ignore[arg-type]
        public_jwk.update({"kid": KEY_ID, "use": "sig", "alg": "RS256"})
        well_known = self.directory / ".well-known"
        well_known.mkdir(exist_ok=True)
        (well_known / "jwks.json").write_text(json.dumps({"keys": [public_jwk]}))

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
