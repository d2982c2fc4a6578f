"""Configuration, read from the environment once per cold start and validated.

Each concern has its own settings model so a function only needs the variables it uses.
Nothing here is read at import time: call the cached getters.

Some fields can also be changed at run time, without a redeploy (``RUNTIME_PARAMETERS``): the
template declares one SSM parameter per field under ``RUNTIME_CONFIG_PATH``, read through
Powertools Parameters (``shop.repositories.runtime_parameters``) and cached for ``RUNTIME_CONFIG_MAX_AGE_SECONDS``.
A present parameter overrides the environment's value once the same pydantic model accepts it;
a rejected one is logged and the last good value (or the environment's) stays in force.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shop.observability import logger
from shop.repositories import runtime_parameters as parameters


class TableSettings(BaseSettings):
    """Names of the DynamoDB tables, wired by infra/template.yaml (Globals)."""

    model_config = SettingsConfigDict(frozen=True)

    products_table: str
    stock_table: str
    stock_ledger_table: str
    reservations_table: str
    orders_table: str
    payments_table: str
    idempotency_table: str
    operations_table: str
    purchase_counts_table: str
    search_index_table: str
    carts_table: str


class InventorySettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True)

    # At most a day: a hold outlives its saga (a Standard capture may wait out an open breaker for
    # about an hour), and a longer one only keeps unpaid stock from other shoppers.
    reservation_ttl_seconds: int = Field(default=900, ge=1, le=86_400)
    # A SKU with this many units available or fewer is reported as low on stock.
    low_stock_threshold: int = Field(default=5, ge=0, le=10**9)  # a SKU holds at most 10**9 units


class EventSettings(BaseSettings):
    """Where events go and where their consumers write, wired per function by the template:
    EVENT_BUS_NAME (the publishers), NOTIFICATIONS_TABLE (the notification consumer),
    CONSUMER_FAILURES_QUEUE_URL (the events the consumers failed on, for their redriver)."""

    model_config = SettingsConfigDict(frozen=True)

    event_bus_name: str = ""
    notifications_table: str = ""
    consumer_failures_queue_url: str = ""


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
    # Finite, and bounded: JSON has no Infinity (GET /admin/circuit-breakers shows these), and an
    # infinite cooldown would never let a probe through.
    breaker_failure_rate_percent: float = Field(default=50.0, gt=0, le=100, allow_inf_nan=False)
    breaker_minimum_calls: int = Field(default=10, ge=1, le=100)
    breaker_minimum_failing_sources: int = Field(default=3, ge=1, le=100)
    breaker_window_seconds: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False)
    # How long an open breaker fails fast before one probe may go through; also how long a probe
    # may stay unanswered before another instance may probe instead.
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)


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
    # POST /orders answers 429 to a customer with this many orders still in progress.
    max_orders_in_progress: int = Field(default=5, ge=1)


@lru_cache(maxsize=1)
def table_settings() -> TableSettings:
    return TableSettings()


@lru_cache(maxsize=1)
def event_settings() -> EventSettings:
    return EventSettings()


@lru_cache(maxsize=1)
def _inventory_environment() -> InventorySettings:
    return InventorySettings()


def inventory_settings() -> InventorySettings:
    """The environment's settings with the runtime parameters in force (``RUNTIME_PARAMETERS``)."""
    return _with_runtime_parameters(InventorySettings, _inventory_environment())


@lru_cache(maxsize=1)
def _payment_environment() -> PaymentSettings:
    return PaymentSettings()


def payment_settings() -> PaymentSettings:
    """The environment's settings with the runtime parameters in force (``RUNTIME_PARAMETERS``)."""
    return _with_runtime_parameters(PaymentSettings, _payment_environment())


@lru_cache(maxsize=1)
def auth_settings() -> AuthSettings:
    return AuthSettings()


@lru_cache(maxsize=1)
def api_settings() -> ApiSettings:
    return ApiSettings()


class SagaSettings(BaseSettings):
    """The state machines the API and the order steps start (ARNs wired by infra/template.yaml).

    Each caller needs only the one it starts, so both are optional here and checked at use.
    """

    model_config = SettingsConfigDict(frozen=True)

    checkout_state_machine_arn: str | None = None
    refund_state_machine_arn: str | None = None
    # Template parameter WorkflowType: EXPRESS executions cannot be described or listed by name.
    workflow_type: Literal["STANDARD", "EXPRESS"] = "STANDARD"


@lru_cache(maxsize=1)
def saga_settings() -> SagaSettings:
    return SagaSettings()


class RecoverySettings(BaseSettings):
    """The orphan sweeper's bounds (template parameters OrphanAfterSeconds, ExpressContinueForSeconds)."""

    model_config = SettingsConfigDict(frozen=True)

    orphan_after_seconds: int = Field(default=60, ge=1)
    # How long after its saga began an Express saga that stopped unsettled is continued rather than
    # dead-lettered (0: never continued, every such order goes to an operator).
    express_continue_for_seconds: int = Field(default=3600, ge=0)


@lru_cache(maxsize=1)
def recovery_settings() -> RecoverySettings:
    return RecoverySettings()


class FeatureSwitches(BaseSettings):
    """Switches an operator flips at run time (parameter ``accepting-orders``).

    Not accepting orders, ``POST /orders`` answers 503 and stores nothing; orders already placed
    finish as usual.
    """

    model_config = SettingsConfigDict(frozen=True)

    accepting_orders: bool = True


@lru_cache(maxsize=1)
def _feature_environment() -> FeatureSwitches:
    return FeatureSwitches()


def feature_switches() -> FeatureSwitches:
    """The environment's switches with the runtime parameters in force (``RUNTIME_PARAMETERS``)."""
    return _with_runtime_parameters(FeatureSwitches, _feature_environment())


# ---------------------------------------------------------------------------- runtime parameters
class RuntimeConfigSettings(BaseSettings):
    """Where the runtime parameters live and how long a read of them is cached.

    ``RUNTIME_CONFIG_PATH`` is ``/{stack name}/config`` (template Globals); unset (unit tests, a
    bare ``chalice local``), only the environment and the defaults apply and SSM is never asked.
    ``RUNTIME_CONFIG_MAX_AGE_SECONDS`` bounds how long an operator's change takes to apply.
    """

    model_config = SettingsConfigDict(frozen=True, env_prefix="RUNTIME_CONFIG_")

    path: str | None = None
    max_age_seconds: int = Field(default=60, ge=0)


@lru_cache(maxsize=1)
def runtime_config_settings() -> RuntimeConfigSettings:
    return RuntimeConfigSettings()


# Each runtime parameter (its name under RUNTIME_CONFIG_PATH, as the template declares it) and the
# settings field it overrides. tests/service/test_runtime_config.py checks the template against it.
RUNTIME_PARAMETERS: dict[str, tuple[type[BaseSettings], str]] = {
    "accepting-orders": (FeatureSwitches, "accepting_orders"),
    "payment-provider": (PaymentSettings, "provider"),
    "payment-breaker-failure-rate-percent": (PaymentSettings, "breaker_failure_rate_percent"),
    "payment-breaker-minimum-calls": (PaymentSettings, "breaker_minimum_calls"),
    "payment-breaker-minimum-failing-sources": (PaymentSettings, "breaker_minimum_failing_sources"),
    "payment-breaker-window-seconds": (PaymentSettings, "breaker_window_seconds"),
    "payment-breaker-cooldown-seconds": (PaymentSettings, "breaker_cooldown_seconds"),
    "reservation-ttl-seconds": (InventorySettings, "reservation_ttl_seconds"),
    "low-stock-threshold": (InventorySettings, "low_stock_threshold"),
}

_ENVIRONMENT_OF: dict[type[BaseSettings], Callable[[], BaseSettings]] = {
    FeatureSwitches: _feature_environment,
    PaymentSettings: _payment_environment,
    InventorySettings: _inventory_environment,
}


class _RuntimeValues:
    """The last parameter values read and, per parameter, the last value its model accepted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.raw: Mapping[str, str] = {}
        self.good: dict[str, Any] = {}
        self.settings: dict[type[BaseSettings], BaseSettings] = {}

    def update(self, raw: Mapping[str, str]) -> None:
        """Validate what changed; a rejected value keeps the last good one (or the environment's)."""
        good: dict[str, Any] = {}
        for name, value in raw.items():
            target = RUNTIME_PARAMETERS.get(name)
            if target is None:
                if name not in self.raw:
                    logger().warning("unknown runtime parameter ignored", extra={"parameter": name})
                continue
            model, field = target
            environment = _ENVIRONMENT_OF[model]()
            try:
                good[name] = getattr(model.model_validate({**environment.model_dump(), field: value}), field)
            except ValidationError as error:
                kept = self.good.get(name, getattr(environment, field))
                if name in self.good:
                    good[name] = kept
                if self.raw.get(name) != value:
                    logger().error(
                        "runtime parameter rejected; keeping the last good value",
                        extra={"parameter": name, "value": value, "kept": kept, "errors": error.errors()},
                    )
        self.raw = raw
        self.good = good
        self.settings.clear()

    def apply[S: BaseSettings](self, model: type[S], environment: S) -> S:
        cached = self.settings.get(model)
        if cached is None:
            updates = {
                field: self.good[name]
                for name, (owner, field) in RUNTIME_PARAMETERS.items()
                if owner is model and name in self.good
            }
            cached = self.settings[model] = environment.model_copy(update=updates) if updates else environment
        return cached  # type: ignore[return-value]


_runtime_values = _RuntimeValues()


def _with_runtime_parameters[S: BaseSettings](model: type[S], environment: S) -> S:
    where = runtime_config_settings()
    if where.path is None:
        return environment
    raw = parameters.read_path(where.path, where.max_age_seconds)
    with _runtime_values.lock:
        # The same mapping (Powertools' cache) or the same values: nothing to validate again.
        if raw is not None and raw is not _runtime_values.raw and raw != _runtime_values.raw:
            _runtime_values.update(raw)
        return _runtime_values.apply(model, environment)


def reset_settings_cache() -> None:
    """Forget cached settings (tests deploy a fresh stack per session with new names)."""
    for getter in (
        table_settings,
        event_settings,
        _inventory_environment,
        _payment_environment,
        _feature_environment,
        runtime_config_settings,
        auth_settings,
        api_settings,
        saga_settings,
        recovery_settings,
    ):
        getter.cache_clear()
    with _runtime_values.lock:
        _runtime_values.raw = {}
        _runtime_values.good = {}
        _runtime_values.settings.clear()
    parameters.clear_cache()
