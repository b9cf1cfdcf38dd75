"""What retention deletes: a pure plan over a replica's inventory of keys.

Rule: point-in-time restore must work for every moment of the window [now - window, now]. Restoring to a
moment t uses the newest generation started at or before t, from its newest snapshot taken at or before t.
So for the window's start we find that generation (the base) and that snapshot (the base snapshot) and keep
everything from there on. Generations started before the base go entirely; in the base generation, older
snapshots and the segments that start by the base snapshot go (a compacted one that reaches past it too:
no restore starts before the base any more). The newest generation always keeps
its newest snapshot and everything after it, so at least one complete generation remains.

Deletions are ordered oldest first, and within a generation snapshots before segments, so that a restore
planned while we delete never picks a generation whose chain we are removing under it.
"""

from __future__ import annotations

from collections.abc import Iterable

from .history import by_generation, started
from .keys import ObjectKey, SegmentKey, SnapshotKey, chain_order


def plan_retention(objects: Iterable[ObjectKey], now_us: int, window_us: int) -> list[ObjectKey]:
    grouped = by_generation(objects)
    if not grouped:
        return []
    cutoff = now_us - window_us
    generations = sorted(grouped)
    newest = generations[-1]
    # The base: the generation a restore to the cutoff would choose (restore.plan_restore's rule: the
    # latest to have started by then; history.py's rule for when a generation started).
    starts = {g: t for g in generations if (t := started(grouped[g])) is not None}
    base = max((g for g, t in starts.items() if t <= cutoff), key=lambda g: (starts[g], g), default=None)
    doomed: list[ObjectKey] = []
    for gen in generations:
        items = sorted(grouped[gen], key=chain_order)
        if gen == newest and gen != base:
            continue
        if base is not None and gen != base and gen in starts and (starts[gen], gen) < (starts[base], base):
            doomed += _snapshots_first(items)
        elif gen < newest and gen not in starts:
            doomed += items  # segments with no snapshot can never be restored
        elif gen == base:
            snapshots = [o for o in items if isinstance(o, SnapshotKey) and o.time_us <= cutoff]
            keep_from = max(snapshots, key=chain_order)
            assert isinstance(keep_from, SnapshotKey)
            doomed += [o for o in items if isinstance(o, SnapshotKey) and chain_order(o) < chain_order(keep_from)]
            # A segment that starts by the base snapshot leads on from a state nothing restores any more (a
            # compacted one may reach past it, and is no use either).
            doomed += [o for o in items if isinstance(o, SegmentKey) and o.first_txid <= keep_from.txid]
    return doomed


def _snapshots_first(items: list[ObjectKey]) -> list[ObjectKey]:
    return [o for o in items if isinstance(o, SnapshotKey)] + [o for o in items if isinstance(o, SegmentKey)]


def next_change(objects: Iterable[ObjectKey], now_us: int, window_us: int) -> int | None:
    """When `plan_retention` could next delete more: the window's start passing a snapshot it has not passed.

    The plan depends on time only through which snapshots are older than the window's start, so between
    those moments nothing new can be deleted: an idle replica needs no retention check until then.
    """
    ends = (o.time_us + window_us for o in objects if isinstance(o, SnapshotKey))
    return min((t for t in ends if t > now_us), default=None)
