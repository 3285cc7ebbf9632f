"""Participant orders: which clips each participant sees, in which order.

- Balanced over conditions: a participant sees the conditions in the plan's proportions (as nearly as whole
  clips allow), and over participants every clip is shown about equally often (clips are dealt out in turn).
- Counterbalanced positions: each participant's sequence of conditions is the base interleaving turned by one
  more step than the previous participant's, so each condition visits each position equally over participants.
- No two clips of one person in a row (a subject's fakes, and real clips of the subject, count as one person).
- Seeded: the same seed gives the same orders.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Item:
    """A clip as orders see it."""

    id: str
    condition: str
    person: str


def orders_possible(clips: Sequence, participants: int, per_participant: int, seed: int) -> bool:
    """Whether `make_orders` finds orders for these plan clips (each with .key, .condition, .person)."""
    try:
        make_orders([Item(c.key, c.condition, c.person) for c in clips], participants, per_participant, seed)
        return True
    except ValueError:
        return False


def _interleave(quota: dict[str, int]) -> list[str]:
    """Conditions spread evenly over len = sum(quota) slots (largest remainder, stable)."""
    n = sum(quota.values())
    slots: list[tuple[float, str]] = []
    for cond, k in quota.items():
        slots += [((j + 0.5) / k, cond) for j in range(k)]
    slots.sort()
    assert len(slots) == n
    return [c for _, c in slots]


def _quota(by_condition: dict[str, list[Item]], n: int) -> dict[str, int]:
    """How many clips of each condition a participant of `n` clips sees (proportional, largest remainder)."""
    total = sum(len(v) for v in by_condition.values())
    exact = {c: n * len(v) / total for c, v in by_condition.items()}
    quota = {c: min(int(x), len(by_condition[c])) for c, x in exact.items()}
    for c in sorted(exact, key=lambda c: (-(exact[c] - int(exact[c])), c)):
        if sum(quota.values()) >= n:
            break
        if quota[c] < len(by_condition[c]):
            quota[c] += 1
    return quota


def make_orders(items: Sequence[Item], participants: int, per_participant: int, seed: int) -> list[list[Item]]:
    """One list of clips per participant (see the module doc). Raises ValueError when no order avoids two clips
    of one person in a row."""
    rng = random.Random(seed)
    by_condition: dict[str, list[Item]] = defaultdict(list)
    for item in sorted(items, key=lambda x: x.id):
        by_condition[item.condition].append(item)
    for cond in sorted(by_condition):
        rng.shuffle(by_condition[cond])
    by_condition = dict(sorted(by_condition.items()))
    quota = _quota(by_condition, per_participant)
    base = _interleave(quota)
    cursor = {c: 0 for c in by_condition}
    orders = []
    for p in range(participants):
        chosen: dict[str, list[Item]] = {}
        for cond, k in quota.items():  # deal clips out in turn: each clip shown about equally often
            pool = by_condition[cond]
            chosen[cond] = [pool[(cursor[cond] + j) % len(pool)] for j in range(k)]
            cursor[cond] = (cursor[cond] + k) % len(pool)
        shift = p % len(base) if base else 0
        pattern = base[shift:] + base[:shift]
        orders.append(_arrange(chosen, pattern, random.Random(f"{seed}:{p}")))
    return orders


def _arrange(chosen: dict[str, list[Item]], pattern: list[str], rng: random.Random, tries: int = 200) -> list[Item]:
    """Fill the condition pattern with the chosen clips, never one person twice in a row."""
    for _ in range(tries):
        left = {c: rng.sample(v, len(v)) for c, v in chosen.items()}
        out: list[Item] = []
        ok = True
        for slot in pattern:
            remaining = [x for v in left.values() for x in v]
            counts = Counter(x.person for x in remaining)
            last = out[-1].person if out else None
            # A person in more than half of what is left must come now, or the rest cannot alternate.
            urgent = [q for q, k in counts.items() if k > (len(remaining) - 1 + 1) // 2 and q != last]

            def fits(x: Item) -> bool:
                return x.person != last and (not urgent or x.person in urgent)

            candidates = [x for x in left.get(slot, []) if fits(x)] or [x for x in remaining if fits(x)]
            if not candidates:
                ok = False
                break
            most = max(counts[x.person] for x in candidates)  # prefer the person with most clips left
            pick = rng.choice([x for x in candidates if counts[x.person] == most])
            left[pick.condition].remove(pick)
            out.append(pick)
        if ok:
            return out
    raise ValueError("no order of these clips avoids two clips of one person in a row")
