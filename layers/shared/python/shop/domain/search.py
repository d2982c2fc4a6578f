"""Product search text rules, pure: how text becomes terms, which terms a product is indexed under,
how a query is read, and how matches rank.

Text is folded so that case and accents never matter: Unicode NFKD (compatibility forms such as
"ﬁ" or "①" become "fi", "1"), case folding ("ß" becomes "ss"), the combining marks dropped
("é" becomes "e"), and the letters no decomposition reaches spelled plainly ("ł", "ø", "æ" become
"l", "o", "ae"). A term is a run of letters and digits in the folded text, and of the marks inside
it (an Indic vowel sign, a Thai vowel: part of the word, not accents), cut to ``MAX_TERM_LENGTH``
characters (``T-shirt (M)`` has the terms ``t``, ``shirt``, ``m``; "किताब" is one term).

Every word of a query must match, each as the beginning of a term of the product (``ston mu``
finds "Stoneware mug"; the contract's example needs this for every word, not only the last). A
product ranks by where its terms match each word: in the name above the description above the
category, a whole-term match above a prefix, and a word matching in several fields above one
matching in one. The weights make one word's match in the name outrank its matches in both other
fields, so "name above description above category" holds for every single word.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shop.errors import SearchTooBroad
from shop.models.catalog import MAX_QUERY_WORDS

# The most distinct terms one product is indexed under. Every product write keeps the index in its
# own TransactWriteItems (at most 100 actions): the worst case is a PATCH that changes every term
# (24 deletes + 24 puts) and reshards the stock (up to MAX_STOCK_SHARDS = 50 counter actions) next
# to the product's update: 24 + 24 + 50 + 1 = 99. Name terms come first, then the category's, then
# the description's in order of first appearance; a description's later words are not searchable.
MAX_INDEXED_TERMS = 24
# Longer terms are cut (indexed and queried alike): keys stay small whatever NFKD expands to.
MAX_TERM_LENGTH = 40
# The most index items one search reads, all its words together (about 1 MB, 250 read units): a
# search is anonymous, and eight one-letter words would otherwise read every term beginning with
# those letters, a large share of the whole index, on every request (80 MB in a catalog of 100,000
# products). Beyond it: 422. A common word in a catalog of more than about 10,000 products meets it
# too; the index would need another shape there.
MAX_INDEX_HITS_PER_SEARCH = 10_000

# Fields a term occurs in, as bits of an index entry's ``fields``.
NAME = 4
DESCRIPTION = 2
CATEGORY = 1
# A prefix match in the name (9) outranks whole-term matches in the description and the category
# (6 + 2), a prefix match in the description (3) a whole-term match in the category (2).
FIELD_WEIGHTS: Mapping[int, int] = {NAME: 9, DESCRIPTION: 3, CATEGORY: 1}

# Letters that carry their accent or stroke in themselves (no decomposition takes it off), as
# folded (lower case): spelled as a shopper without them on the keyboard types them.
_PLAIN_SPELLING = str.maketrans(
    {"ł": "l", "ø": "o", "đ": "d", "ð": "d", "ħ": "h", "ŧ": "t", "\u0131": "i", "æ": "ae", "œ": "oe", "þ": "th"}
)


def fold(text: str) -> str:
    """``text`` without case and accents: NFKD, case folding, NFKD again (folding can compose), combining marks
    dropped, letters without a decomposition spelled plainly."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).translate(_PLAIN_SPELLING)


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch).startswith("M")


def terms(text: str) -> list[str]:
    """The folded terms of ``text`` in order, repeats included: each a letter or digit (of any script) and the
    letters, digits and marks that follow it. The marks fold leaves (their combining class is 0: an Indic
    vowel sign, a Thai vowel) belong to the word; cut at them, "किताब" was "क", "त", "ब", three one-letter
    prefixes that matched other products and counted as three words of a query."""
    found: list[str] = []
    current: list[str] = []
    for ch in fold(text):
        if (ch.isalnum() and ch != "_") or (current and _is_mark(ch)):
            current.append(ch)
        elif current:
            found.append("".join(current))
            current = []
    if current:
        found.append("".join(current))
    return [term[:MAX_TERM_LENGTH] for term in found]


def index_terms(name: str, description: str, category: str) -> dict[str, int]:
    """The terms a product is indexed under, each with the fields (bits) it occurs in.

    At most ``MAX_INDEXED_TERMS``: the name's first, then the category's, then the description's.
    """
    indexed: dict[str, int] = {}
    for field, text in ((NAME, name), (CATEGORY, category), (DESCRIPTION, description)):
        for term in terms(text):
            if term in indexed:
                indexed[term] |= field
            elif len(indexed) < MAX_INDEXED_TERMS:
                indexed[term] = field
    return indexed


def query_words(q: str) -> list[str]:
    """The distinct folded words of a query, in order; SearchTooBroad (422) beyond ``MAX_QUERY_WORDS``.

    A query without a letter or digit has no words and matches nothing.
    """
    words = list(dict.fromkeys(terms(q)))
    if len(words) > MAX_QUERY_WORDS:
        raise SearchTooBroad(
            f"the search has {len(words)} different words; at most {MAX_QUERY_WORDS} are searched",
            errors=[{"field": "q", "message": f"at most {MAX_QUERY_WORDS} different words"}],
        )
    return words


def reading_order(words: Iterable[str]) -> list[str]:
    """The order a search reads its words' index items in: the longest first, since it begins the
    fewest terms, so a word that matches nothing ends the search before the short words are read."""
    return sorted(words, key=len, reverse=True)


@dataclass(frozen=True)
class TermMatch:
    """One of a product's indexed terms that begins with a query word, and the fields it occurs in."""

    term: str
    fields: int


def word_score(word: str, matches: Iterable[TermMatch]) -> int:
    """How well a product's matching terms match ``word``: per field, its weight for a prefix match
    and the weight again when a whole term equals the word."""
    prefix_fields = 0
    whole_fields = 0
    for match in matches:
        prefix_fields |= match.fields
        if match.term == word:
            whole_fields |= match.fields
    return sum(
        weight * ((field & prefix_fields != 0) + (field & whole_fields != 0)) for field, weight in FIELD_WEIGHTS.items()
    )


@dataclass(frozen=True, order=True)
class Ranked:
    """A product's place in the results: ordered best first, then by SKU (so paging is stable)."""

    negated_score: int
    sku: str

    @property
    def score(self) -> int:
        return -self.negated_score

    @classmethod
    def of(cls, score: int, sku: str) -> Ranked:
        return cls(-score, sku)


def rank(matches_by_word: Mapping[str, Mapping[str, Iterable[TermMatch]]]) -> list[Ranked]:
    """The products that match every word (word -> SKU -> its matching terms), best first.

    A product's score is the sum of its words' scores; no words, no results.
    """
    if not matches_by_word:
        return []
    skus = set.intersection(*(set(by_sku) for by_sku in matches_by_word.values()))
    ranked = [
        Ranked.of(sum(word_score(word, by_sku[sku]) for word, by_sku in matches_by_word.items()), sku) for sku in skus
    ]
    return sorted(ranked)


def page_after(ranked: list[Ranked], after: Ranked | None, limit: int) -> tuple[list[Ranked], bool]:
    """The ``limit`` results ranked after ``after`` (from the first without it), and whether more follow."""
    remaining = [entry for entry in ranked if after is None or entry > after]
    return remaining[:limit], len(remaining) > limit
