"""Configuration, read from the environment once per cold start and validated.

Each concern has its own settings model so a function only needs the variables it uses.
Nothing here is read at import time: call the cached getters.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator
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


class PaymentSettings(BaseSettings):
    """Which payment provider the saga steps use, and its circuit breaker's tuning.

    Environment: PAYMENT_PROVIDER, PAYMENT_BREAKER_FAILURE_RATE_PERCENT, PAYMENT_BREAKER_MINIMUM_CALLS,
    PAYMENT_BREAKER_MINIMUM_FAILING_SOURCES, PAYMENT_BREAKER_WINDOW_SECONDS, PAYMENT_BREAKER_COOLDOWN_SECONDS.
    """

    model_config = SettingsConfigDict(frozen=True, env_prefix="PAYMENT_")

    provider: Literal["simulator"] = "simulator"
    # The breaker opens when, within the sliding window, at least ``breaker_minimum_calls``
    # operations (one per idempotency key, however often retried) were seen, at least
    # ``breaker_failure_rate_percent`` of them failed, and the failures came from at least
    # ``breaker_minimum_failing_sources`` distinct customers: one customer's failing card cannot
    # starve every other order. Minimum calls are capped by the outcomes the breaker keeps (100).
    breaker_failure_rate_percent: float = Field(default=50.0, gt=0, le=100)
    breaker_minimum_calls: int = Field(default=10, ge=1, le=100)
    breaker_minimum_failing_sources: int = Field(default=3, ge=1)
    breaker_window_seconds: float = Field(default=60.0, gt=0)
    # How long an open breaker fails fast before one probe may go through; also how long a probe
    # may stay unanswered before another instance may probe instead.
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)


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

    @field_validator("auth_issuer")
    @classmethod
    def _issuer_url(cls, value: str) -> str:
        # CloudFormation's UserPool.ProviderURL has no scheme; the tokens' `iss` is its https URL.
        return value if "://" in value else f"https://{value}"

    @property
    def jwks_url(self) -> str:
        return f"{self.auth_issuer.rstrip('/')}/.well-known/jwks.json"


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True)

    # The Secrets Manager secret that signs pagination tokens (shop.repositories.secrets reads it).
    pagination_secret_arn: str = Field(min_length=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1)


@lru_cache(maxsize=1)
def table_settings() -> TableSettings:
    return TableSettings()  # type: ignore[call-arg]


@lru_cache(maxsize=1)
def inventory_settings() -> InventorySettings:
    return InventorySettings()


@lru_cache(maxsize=1)
def payment_settings() -> PaymentSettings:
    return PaymentSettings()


@lru_cache(maxsize=1)
def auth_settings() -> AuthSettings:
    return AuthSettings()  # type: ignore[call-arg]


@lru_cache(maxsize=1)
def api_settings() -> ApiSettings:
    return ApiSettings()  # type: ignore[call-arg]


class SagaSettings(BaseSettings):
    """The state machines the API and the order steps start (ARNs wired by infra/template.yaml).

    Each caller needs only the one it starts, so both are optional here and checked at use.
    """

    model_config = SettingsConfigDict(frozen=True)

    checkout_state_machine_arn: str | None = None
    refund_state_machine_arn: str | None = None


@lru_cache(maxsize=1)
def saga_settings() -> SagaSettings:
    return SagaSettings()


class RecoverySettings(BaseSettings):
    """The orphan sweeper's bound (template parameter OrphanAfterSeconds)."""

    model_config = SettingsConfigDict(frozen=True)

    orphan_after_seconds: int = Field(default=60, ge=1)


@lru_cache(maxsize=1)
def recovery_settings() -> RecoverySettings:
    return RecoverySettings()


def reset_settings_cache() -> None:
    """Forget cached settings (tests deploy a fresh stack per session with new names)."""
    for getter in (
        table_settings,
        inventory_settings,
        payment_settings,
        auth_settings,
        api_settings,
        saga_settings,
        recovery_settings,
    ):
        getter.cache_clear()
