"""The arithmetic of sharded stock: shard choice, the fallback's plan, restocks and reshards."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from shop.domain import stock_shards
from shop.models.inventory import ShardTake, total_available, units_by_shard


@dataclass(frozen=True)
class Counter:
    available: int


@pytest.mark.parametrize(
    ("total", "shards", "expected"),
    [(10, 1, [10]), (10, 4, [3, 3, 2, 2]), (3, 5, [1, 1, 1, 0, 0]), (0, 3, [0, 0, 0]), (50, 50, [1] * 50)],
)
def test_spread_is_even_and_sums_to_the_total(total: int, shards: int, expected: list[int]) -> None:
    assert stock_shards.spread(total, shards) == expected


@pytest.mark.parametrize(("total", "shards"), [(-1, 2), (5, 0)])
def test_spread_refuses_what_cannot_be_spread(total: int, shards: int) -> None:
    with pytest.raises(ValueError, match="cannot spread"):
        stock_shards.spread(total, shards)


def test_pick_shard_stays_in_range_and_reaches_every_shard() -> None:
    rng = random.Random(7)
    picked = {stock_shards.pick_shard(5, rng) for _ in range(200)}
    assert picked == {0, 1, 2, 3, 4}
    assert {stock_shards.pick_shard(1, rng) for _ in range(20)} == {0}


def test_plan_takes_one_shard_with_enough_at_random() -> None:
    rng = random.Random(3)
    available = {0: 1, 1: 5, 2: 0, 3: 5}
    chosen = {stock_shards.plan_takes(available, 4, rng)[0].shard for _ in range(100)}  # type: ignore[index]
    assert chosen == {1, 3}
    assert stock_shards.plan_takes(available, 4, rng) in (
        [ShardTake(shard=1, quantity=4)],
        [ShardTake(shard=3, quantity=4)],
    )


def test_plan_takes_falls_back_to_the_fewest_shards_fullest_first() -> None:
    assert stock_shards.plan_takes({0: 2, 1: 3, 2: 1, 3: 3}, 7) == [
        ShardTake(shard=1, quantity=3),
        ShardTake(shard=3, quantity=3),
        ShardTake(shard=0, quantity=1),
    ]


@pytest.mark.parametrize(("available", "quantity"), [({0: 2, 1: 2}, 5), ({}, 1), ({0: 0}, 1), ({0: 3}, 0)])
def test_plan_takes_is_none_when_the_sum_is_short(available: dict[int, int], quantity: int) -> None:
    assert stock_shards.plan_takes(available, quantity) is None


def test_plan_increase_fills_the_emptiest_shards_first() -> None:
    assert stock_shards.plan_increase({0: 5, 1: 0, 2: 2}, 4) == {1: 3, 2: 1}
    assert stock_shards.plan_increase({0: 5, 1: 0, 2: 2}, 10) == {0: 1, 1: 6, 2: 3}
    assert stock_shards.plan_increase({0: 0, 1: 0}, 3) == {0: 2, 1: 1}
    assert stock_shards.plan_increase({0: 7}, 3) == {0: 3}


@pytest.mark.parametrize("delta", [1, 2, 7, 100, 12_345])
def test_plan_increase_adds_exactly_delta(delta: int) -> None:
    available = {0: 9, 1: 0, 2: 4, 3: 4}
    added = stock_shards.plan_increase(available, delta)
    assert sum(added.values()) == delta and all(units > 0 for units in added.values())
    assert set(added) <= set(available)


def test_plan_decrease_takes_from_the_fullest_shards() -> None:
    assert stock_shards.plan_decrease({0: 2, 1: 6, 2: 3}, 4) == {1: 4}
    assert stock_shards.plan_decrease({0: 2, 1: 3, 2: 3}, 7) == {1: 3, 2: 3, 0: 1}
    assert stock_shards.plan_decrease({0: 2, 1: 3}, 6) is None


@pytest.mark.parametrize(
    ("available", "shards", "expected"),
    [
        ({0: 10}, 4, {0: 3, 1: 3, 2: 2, 3: 2}),
        ({0: 0, 1: 5, 2: 0, 3: 1}, 2, {0: 3, 1: 3}),
        ({0: 4, 1: 4}, 1, {0: 8}),
        ({0: 3}, 3, {0: 1, 1: 1, 2: 1}),
    ],
)
def test_reshard_keeps_the_total_on_shards_zero_to_n(
    available: dict[int, int], shards: int, expected: dict[int, int]
) -> None:
    moved = stock_shards.reshard(available, shards)
    assert moved == expected
    assert sum(moved.values()) == sum(available.values())


def test_a_skus_available_counts_every_counter_but_a_take_only_the_positive_ones() -> None:
    # A counter below zero lowers the SKU's ``available``, and gives nothing to a take or a decrease.
    counters = {0: Counter(5), 1: Counter(-2), 2: Counter(0)}

    assert units_by_shard(counters) == {0: 5, 1: -2, 2: 0}
    assert total_available(units_by_shard(counters)) == 3
    assert stock_shards.plan_takes({0: 5, 1: -2}, 5) == [ShardTake(shard=0, quantity=5)]
    assert stock_shards.plan_decrease({0: 5, 1: -2}, 4) == {0: 4}
    assert stock_shards.plan_decrease({0: 5, 1: -2}, 6) is None
