from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Currency = Literal["USD"]

# DynamoDB numbers and JSON consumers both stay exact well below this; anything larger is
# rejected as out of range instead of overflowing somewhere downstream.
MAX_AMOUNT = 10**12


class Money(BaseModel):
    """An exact amount in minor units (cents)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    amount: int = Field(ge=0, le=MAX_AMOUNT)
    currency: Currency = "USD"

    def __add__(self, other: Money) -> Money:
        if other.currency != self.currency:
            raise ValueError("cannot add amounts in different currencies")
        return Money(amount=self.amount + other.amount, currency=self.currency)

    def times(self, quantity: int) -> Money:
        return Money(amount=self.amount * quantity, currency=self.currency)

    @classmethod
    def zero(cls, currency: Currency = "USD") -> Money:
        return cls(amount=0, currency=currency)
