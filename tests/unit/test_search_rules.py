"""Search text rules (shop.domain.search): folding, terms, what a product is indexed under, query
words and ranking. Pure: no AWS."""

from __future__ import annotations

import pytest

from shop.domain import search
from shop.domain.search import CATEGORY, DESCRIPTION, NAME, Ranked, TermMatch
from shop.errors import SearchTooBroad
from shop.models.common import MAX_STOCK_SHARDS

# DynamoDB's limit on the actions of one TransactWriteItems.
TRANSACTION_LIMIT = 100


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Café CRÈME", "cafe creme"),
        ("Straße", "strasse"),  # case folding, not lower(): ß is "ss"
        ("ÅNGSTRÖM", "angstrom"),
        ("ﬁne", "fine"),  # compatibility ligature
        ("İstanbul", "istanbul"),  # the dot above is a combining mark once decomposed
        ("Crème brûlée", "creme brulee"),
        ("Ǆemal", "dzemal"),  # a titlecase digraph that decomposes after folding
        # Letters no decomposition reaches: a shopper types them plainly (before, "lodz" missed "Łódź").
        ("Łódź", "lodz"),
        ("Smørrebrød", "smorrebrod"),
        ("Œuvre", "oeuvre"),
        ("Ærø", "aero"),
        ("Đà Nẵng", "da nang"),
        ("Þórshöfn", "thorshofn"),
    ],
)
def test_fold_removes_case_and_accents(text: str, folded: str) -> None:
    assert search.fold(text) == folded


def test_terms_are_runs_of_letters_and_digits() -> None:
    assert search.terms("Organic cotton T-shirt (M), 3-pack_x") == [
        "organic",
        "cotton",
        "t",
        "shirt",
        "m",
        "3",
        "pack",
        "x",
    ]
    assert search.terms("Ελληνικό καφέ 日本茶") == ["ελληνικο", "καφε", "日本茶"]
    assert search.terms("!!! --- ...") == []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("किताब", ["किताब"]),  # Devanagari: vowel signs are spacing marks, part of the word
        ("पुरानी हिंदी किताब सेट", ["पुरानी", "हिंदी", "किताब", "सेट"]),
        ("สวัสดี", ["สวัสดี"]),  # Thai vowels above and below the consonants
        ("குவளை", ["குவளை"]),  # Tamil
        ("মাটির", ["মাটির"]),  # Bengali
    ],
)
def test_a_word_keeps_the_marks_inside_it(text: str, words: list[str]) -> None:
    """Cut at every vowel sign, "किताब" was "क", "त", "ब": one-letter prefixes matching other products, and a
    four-word Hindi name was ten words, over the query's limit."""
    assert search.terms(text) == words


def test_a_long_term_is_cut_to_the_maximum_length() -> None:
    (term,) = search.terms("a" * 500)
    assert term == "a" * search.MAX_TERM_LENGTH


def test_index_terms_carry_the_fields_they_occur_in() -> None:
    indexed = search.index_terms("Stoneware mug", "A mug of stoneware, for the kitchen.", "Kitchen")
    assert indexed["stoneware"] == NAME | DESCRIPTION
    assert indexed["mug"] == NAME | DESCRIPTION
    assert indexed["kitchen"] == CATEGORY | DESCRIPTION
    assert indexed["for"] == DESCRIPTION


def test_index_terms_are_bounded_name_and_category_first() -> None:
    description = " ".join(f"word{number}" for number in range(100))
    indexed = search.index_terms("Blue kettle", description, "kitchen")
    assert len(indexed) == search.MAX_INDEXED_TERMS
    assert list(indexed)[:3] == ["blue", "kettle", "kitchen"]
    assert "word0" in indexed and f"word{search.MAX_INDEXED_TERMS - 4}" in indexed
    assert f"word{search.MAX_INDEXED_TERMS - 3}" not in indexed


def test_the_worst_product_write_fits_in_one_transaction() -> None:
    # Every term deleted, every new one put, the stock resharded (all counters) and the product updated.
    assert 2 * search.MAX_INDEXED_TERMS + MAX_STOCK_SHARDS + 1 <= TRANSACTION_LIMIT


def test_query_words_are_folded_distinct_and_ordered() -> None:
    assert search.query_words("Ston MU mu ston Crème") == ["ston", "mu", "creme"]
    assert search.query_words("   ...  ") == []


def test_a_query_with_too_many_words_is_refused() -> None:
    words = " ".join(f"w{number}" for number in range(search.MAX_QUERY_WORDS))
    assert len(search.query_words(words)) == search.MAX_QUERY_WORDS
    assert len(search.query_words(words + " w0")) == search.MAX_QUERY_WORDS  # a repeat is not another word
    with pytest.raises(SearchTooBroad) as refused:
        search.query_words(words + " extra")
    assert refused.value.status == 422
    assert refused.value.extensions["errors"] == [{"field": "q", "message": "at most 8 different words"}]


def test_word_score_ranks_fields_and_whole_terms() -> None:
    def score(term: str, fields: int, word: str = "mug") -> int:
        return search.word_score(word, [TermMatch(term, fields)])

    name_prefix = score("mugs", NAME)
    description_whole = score("mug", DESCRIPTION)
    category_whole = score("mug", CATEGORY)
    # A prefix match in the name beats whole-term matches in both other fields together.
    assert name_prefix > search.word_score("mug", [TermMatch("mug", DESCRIPTION | CATEGORY)])
    assert score("mug", NAME) > name_prefix
    assert description_whole > category_whole
    assert score("mugs", DESCRIPTION) > category_whole
    # Matching in more fields is better than in one.
    assert search.word_score("mug", [TermMatch("mug", NAME), TermMatch("mugs", DESCRIPTION)]) > score("mug", NAME)


def test_rank_needs_every_word_and_orders_best_first_then_by_sku() -> None:
    matches = {
        "ston": {
            "MUG": [TermMatch("stoneware", NAME)],
            "BOWL": [TermMatch("stoneware", DESCRIPTION)],
            "PLATE": [TermMatch("stoneware", NAME)],
        },
        "mu": {
            "MUG": [TermMatch("mug", NAME)],
            "BOWL": [TermMatch("mug", NAME)],
            "PLATE": [TermMatch("museum", DESCRIPTION)],
            "CUP": [TermMatch("mug", NAME)],  # no "ston": not a result
        },
    }
    ranked = search.rank(matches)
    assert [entry.sku for entry in ranked] == ["MUG", "BOWL", "PLATE"]
    assert ranked[0].score == 2 * search.FIELD_WEIGHTS[NAME]
    assert search.rank({}) == []


def test_ties_are_ordered_by_sku() -> None:
    same = [TermMatch("kettle", NAME)]
    ranked = search.rank({"kettle": {"K-2": same, "K-1": same, "K-3": same}})
    assert [entry.sku for entry in ranked] == ["K-1", "K-2", "K-3"]


def test_page_after_continues_after_the_last_result() -> None:
    ranked = [Ranked.of(20, "A"), Ranked.of(20, "B"), Ranked.of(9, "A2"), Ranked.of(3, "C")]
    first, more = search.page_after(ranked, None, 2)
    assert (first, more) == (ranked[:2], True)
    second, more = search.page_after(ranked, first[-1], 2)
    assert (second, more) == (ranked[2:], False)
    # A cursor whose product dropped out meanwhile still continues at the right place.
    assert search.page_after(ranked, Ranked.of(10, "Z"), 10) == (ranked[2:], False)
