"""Configuration, read from the environment once per cold start and validated.

Each concern has its own settings model so a function only needs the variables it uses.
Nothing here is read at import time: call the cached getters.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class TableSettings(BaseSettings):
    """Names of the DynamoDB tables, wired by infra/template.yaml (Globals)."""

    model_config = SettingsConfigDict(frozen=True)

    products_table: str
    stock_ledger_table: str
    reservations_table: str
    orders_table: str
    payments_table: str
    idempotency_table: str
    operations_table: str


class InventorySettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True)

    reservation_ttl_seconds: int = Field(default=900, ge=1)


class AuthSettings(BaseSettings):
    """Who issues the bearer tokens the API accepts.

    On AWS the issuer is the Cognito user pool's provider URL; locally it is the dev identity
    provider that `make run` generates. The keys are always fetched from
    ``{issuer}/.well-known/jwks.json`` so the verification code is the same in both places.
    """

    model_config = SettingsConfigDict(frozen=True)

    auth_issuer: str
    auth_audience: str
    admin_group: str = "admin"

    @property
    def jwks_url(self) -> str:
        return f"{self.auth_issuer.rstrip('/')}/.well-known/jwks.json"


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True)

    pagination_secret: SecretStr = Field(min_length=32)
    max_body_bytes: int = Field(default=64 * 1024, ge=1)


@lru_cache(maxsize=1)
def table_settings() -> TableSettings:
    return TableSettings()  # type: ignore[call-arg]


@lru_cache(maxsize=1)
def inventory_settings() -> InventorySettings:
    return InventorySettings()


@lru_cache(maxsize=1)
def auth_settings() -> AuthSettings:
    return AuthSettings()  # type: ignore[call-arg]


@lru_cache(maxsize=1)
def api_settings() -> ApiSettings:
    return ApiSettings()  # type: ignore[call-arg]


def reset_settings_cache() -> None:
    """Forget cached settings (tests deploy a fresh stack per session with new names)."""
    for getter in (table_settings, inventory_settings, auth_settings, api_settings):
        getter.cache_clear()
