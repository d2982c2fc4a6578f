"""The arithmetic of sharded stock: where a reservation takes its units, how a total is spread.

A SKU's ``available`` is the sum of its counters, shards ``0 .. stock_shards - 1`` (StockTable).
Pure functions: the inventory and catalog domains read the shards, ask here, and write.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from shop.models.inventory import ShardTake, total_available


def _takeable(available: Mapping[int, int]) -> int:
    """The units a take or a decrease can have: the positive counters' sum (a counter at or below
    zero gives nothing, and takes nothing from the others)."""
    return sum(max(units, 0) for units in available.values())


def spread(total: int, shards: int) -> list[int]:
    """``total`` units over ``shards`` counters as evenly as integers allow (the lower shards get
    the remainder); the parts always sum to ``total``."""
    if shards < 1 or total < 0:
        raise ValueError(f"cannot spread {total} units over {shards} shards")
    base, remainder = divmod(total, shards)
    return [base + (1 if shard < remainder else 0) for shard in range(shards)]


def pick_shard(shards: int, rng: random.Random | None = None) -> int:
    """The shard a reservation tries first, uniformly at random, so concurrent buyers spread."""
    return (rng or random).randrange(max(shards, 1))


def plan_takes(available: Mapping[int, int], quantity: int, rng: random.Random | None = None) -> list[ShardTake] | None:
    """Where to take ``quantity`` units from, given each shard's ``available``; None when the sum is short.

    One shard if any has enough (chosen at random among those, so fallbacks spread too); else the
    fewest shards, fullest first, so the transaction stays small.
    """
    if quantity < 1 or _takeable(available) < quantity:
        return None
    enough = sorted(shard for shard, units in available.items() if units >= quantity)
    if enough:
        return [ShardTake(shard=(rng or random).choice(enough), quantity=quantity)]
    takes: list[ShardTake] = []
    needed = quantity
    for shard, units in sorted(available.items(), key=lambda entry: (-entry[1], entry[0])):
        if needed == 0 or units <= 0:
            break
        taken = min(units, needed)
        takes.append(ShardTake(shard=shard, quantity=taken))
        needed -= taken
    return takes


def plan_increase(available: Mapping[int, int], delta: int) -> dict[int, int]:
    """Per shard, the units to add so that ``delta`` more fills the emptiest shards first (water-filling):
    a restock evens out shards a sale has drained. Only shards in ``available`` receive units."""
    if delta < 1 or not available:
        raise ValueError(f"cannot add {delta} units to {len(available)} shards")
    levels = dict(available)
    added = dict.fromkeys(levels, 0)
    remaining = delta
    while remaining:
        lowest = min(levels.values())
        at_lowest = sorted(shard for shard, units in levels.items() if units == lowest)
        above = [units for units in levels.values() if units > lowest]
        # Raise every lowest shard to the next level (or share out what is left).
        step = min(above) - lowest if above else remaining
        if step * len(at_lowest) > remaining:
            for shard, part in zip(at_lowest, spread(remaining, len(at_lowest)), strict=True):
                added[shard] += part
            break
        for shard in at_lowest:
            levels[shard] += step
            added[shard] += step
        remaining -= step * len(at_lowest)
    return {shard: units for shard, units in added.items() if units}


def plan_decrease(available: Mapping[int, int], delta: int) -> dict[int, int] | None:
    """Per shard, the units to remove so ``delta`` fewer come from the fullest shards first (a decrease
    evens shards out too); None if the sum is short."""
    if delta < 1 or _takeable(available) < delta:
        return None
    removed: dict[int, int] = {}
    needed = delta
    for shard, units in sorted(available.items(), key=lambda entry: (-entry[1], entry[0])):
        if needed == 0:
            break
        removed[shard] = min(units, needed)
        needed -= removed[shard]
    return removed


def reshard(available: Mapping[int, int], shards: int) -> dict[int, int]:
    """The shards' new values when the SKU's stock moves onto ``shards`` counters: the same total,
    spread evenly over shards ``0 .. shards - 1`` (every other shard is to be removed)."""
    return dict(enumerate(spread(total_available(available), shards)))
