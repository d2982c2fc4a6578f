"""Reading RFC 7240's ``Prefer`` header for ``POST /orders``: the ``wait`` preference, the rest ignored."""

from __future__ import annotations

import pytest

from chalicelib.orders import MAX_WAIT_SECONDS, wait_preference


@pytest.mark.parametrize(
    ("prefer", "seconds"),
    [
        ("wait=5", 5),
        ("wait=10", 10),
        ("WAIT = 4", 4),  # names compare case-insensitively; RFC 7240 allows spaces around "="
        ("respond-async, wait=5", 5),
        ("wait=2; strict", 2),  # a preference's parameters
        ('wait="3"', 3),
        ('foo="a, wait=9", wait=1', 1),  # a comma inside a quoted value separates nothing
        ("wait=3, wait=8", 3),  # only a preference's first occurrence counts
        ("wait=11", MAX_WAIT_SECONDS),  # "up to N seconds": the most this route waits
        ("wait=99999999999999999999", MAX_WAIT_SECONDS),
        (None, None),
        ("respond-async", None),
        ("wait=0", None),
        ("wait=", None),
        ("wait", None),
        ("wait=1.5", None),
        ("wait=-1", None),
        ("wait=٣", None),  # a digit, but not an ASCII one
        ("wait=0x5", None),
        ("wait=abc, wait=5", None),  # the first wait counts, and it asks for nothing honourable
        (",,,", None),
    ],
)
def test_the_wait_preference_is_read_as_rfc_7240_writes_it(prefer: str | None, seconds: int | None) -> None:
    assert wait_preference(prefer) == seconds
