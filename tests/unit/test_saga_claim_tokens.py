"""The claim an order stores: short, distinct per execution, and telling which saga holds it."""

from __future__ import annotations

from shop.models.orders import SagaClaim
from shop.repositories.orders import claim_token
from shop.repositories.sagas import claimed_by

CHECKOUT = "arn:aws:states:us-east-1:123456789012:stateMachine:shop-CheckoutStateMachine-Ab12Cd34"
REFUND = "arn:aws:states:us-east-1:123456789012:stateMachine:shop-RefundStateMachine-Ef56Gh78"
ORDER = "5b0f7a52-3c1e-4d8e-9a57-2f6f5f0c8e11"


def test_two_express_executions_of_one_name_hold_different_claims() -> None:
    first = f"arn:aws:states:us-east-1:123456789012:express:shop-CheckoutStateMachine-Ab12Cd34:{ORDER}:0a1b"
    second = f"arn:aws:states:us-east-1:123456789012:express:shop-CheckoutStateMachine-Ab12Cd34:{ORDER}:0a1c"
    tokens = {claim_token(SagaClaim(execution=arn, epoch=1)) for arn in (first, second)}
    assert len(tokens) == 2
    assert all(len(token) < 60 for token in tokens)  # an ARN is 100-170 characters


def test_a_claim_says_which_state_machine_holds_the_order() -> None:
    standard = f"arn:aws:states:us-east-1:123456789012:execution:shop-RefundStateMachine-Ef56Gh78:refund-{ORDER}"
    token = claim_token(SagaClaim(execution=standard, epoch=2))
    assert claimed_by(token, REFUND)
    assert not claimed_by(token, CHECKOUT)
