"""The API's signed opaque tokens: one secret, one library, one salt per purpose.

Pagination tokens (``shop.pagination``) and anonymous cart tokens (``shop.domain.carts``) are
signed alike: itsdangerous' URL-safe serializer with HMAC-SHA256, keyed by the secret in Secrets
Manager (``PaginationSecret`` in infra/template.yaml, read through ``shop.repositories.secrets``).
Each purpose has its own salt, so a token issued for one is refused by every other; ``load``
turns such a token into the caller's 400 for its own field.
"""

from __future__ import annotations

import hashlib
from typing import Any

from itsdangerous import BadData, URLSafeSerializer

from shop.errors import FieldError
from shop.repositories.secrets import pagination_key


def serializer(purpose: str) -> URLSafeSerializer:
    """The signing serializer of ``purpose`` (e.g. ``"pagination.orders"``, ``"cart"``)."""
    return URLSafeSerializer(pagination_key(), salt=f"shop.{purpose}", signer_kwargs={"digest_method": hashlib.sha256})


def load(purpose: str, token: str, refused: FieldError) -> Any:
    """The payload of a token signed for ``purpose``; raises ``refused`` (the caller's 400, naming its
    field) for a token that was altered, forged or signed for another purpose."""
    try:
        return serializer(purpose).loads(token)
    except BadData:
        raise refused from None
