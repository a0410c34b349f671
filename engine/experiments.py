"""Online experiments between the serving ranker and a candidate: team-draft interleaving and A/B, credited from
the logged impressions.

- **Team-draft interleaving** (Radlinski, Kurup and Joachims, *How does clickthrough data reflect retrieval
  quality?*, CIKM 2008): the two rankers take turns, the one with fewer picks (a coin flip on ties) adding its
  best product not yet on the page; each shown product remembers its team.  A search's clicks are credited to
  the teams of the products clicked: the team with more clicks wins the search.  Both rankers are judged on the
  same shopper, query and moment, so the comparison needs far fewer searches than comparing two arms' CTR.
- **A/B**: a share of shoppers (by user, or by search when anonymous) sees the candidate's page; clicks per
  search compared between the arms (a two-proportion z-test on "the search drew a click").

An impression's ``arm`` records it: ``td:<teams>`` (one ``A``/``B`` per shown rank; A = serving,
B = candidate), ``ab:A`` or ``ab:B``.  :func:`experiment_stats` turns logged (arm, clicked ranks) rows into wins,
ties and losses with a two-sided sign test, or the arms' click rates with a z-test, and the searches needed.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np

SERVING, CANDIDATE = "A", "B"


def team_draft(a: Sequence[str], b: Sequence[str], k: int, rng: np.random.Generator) -> tuple[list[str], str]:
    """The interleaved page of ``a`` (serving) and ``b`` (candidate), ``k`` long, and each position's team."""
    page: list[str] = []
    teams: list[str] = []
    seen: set[str] = set()
    ia = ib = picks_a = picks_b = 0
    while len(page) < k:
        a_turn = picks_a < picks_b or (picks_a == picks_b and rng.random() < 0.5)
        for turn in (True, False) if a_turn else (False, True):
            src, i = (a, ia) if turn else (b, ib)
            while i < len(src) and src[i] in seen:
                i += 1
            if turn:
                ia = i
            else:
                ib = i
            if i < len(src):
                page.append(src[i])
                seen.add(src[i])
                teams.append(SERVING if turn else CANDIDATE)
                if turn:
                    picks_a += 1
                else:
                    picks_b += 1
                break
        else:
            break  # both lists exhausted
    return page, "".join(teams)


def ab_arm(key: str, share: float, salt: str = "") -> str:
    """``B`` for a stable ``share`` of keys (users, or searches when anonymous), else ``A``."""
    h = int.from_bytes(hashlib.sha256((salt + key).encode("utf-8")).digest()[:8], "big") / 2.0**64
    return CANDIDATE if h < share else SERVING


def credit(arm: str, clicked_ranks: Sequence[int]) -> tuple[int, int]:
    """Clicks of the serving (A) and candidate (B) team in one interleaved search (1-based ranks)."""
    teams = arm[3:] if arm.startswith("td:") else ""
    a = b = 0
    for r in set(int(x) for x in clicked_ranks):
        if 1 <= r <= len(teams):
            if teams[r - 1] == SERVING:
                a += 1
            else:
                b += 1
    return a, b


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial (sign) test of wins against losses, ties left out."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def searches_needed(p: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Decided searches (wins + losses) a sign test needs to detect a win rate ``p`` (normal approximation)."""
    if p is None or abs(p - 0.5) < 1e-9:
        return None
    za, zb = 1.959964, 0.841621  # alpha 0.05 two-sided, power 0.8
    return math.ceil(((za * 0.5 + zb * math.sqrt(p * (1 - p))) / (p - 0.5)) ** 2)


def two_proportion(c1: int, n1: int, c2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) of the difference between two click rates."""
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    p = (c1 + c2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (c2 / n2 - c1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def experiment_stats(rows: Sequence[tuple[str, Sequence[int]]]) -> dict:
    """From (arm, clicked ranks) per logged search of an experiment: the interleaving and A/B summaries."""
    out: dict = {}
    td = [(a, r) for a, r in rows if a and a.startswith("td:")]
    if td:
        wins = losses = ties = none = 0
        for arm, ranks in td:
            a, b = credit(arm, ranks)
            if a == b == 0:
                none += 1
            elif b > a:
                wins += 1
            elif a > b:
                losses += 1
            else:
                ties += 1
        decided = wins + losses
        rate = wins / decided if decided else None
        out["interleaving"] = {
            "searches": len(td),
            "candidate_wins": wins,
            "serving_wins": losses,
            "ties": ties,
            "no_clicks": none,
            "candidate_win_rate": round(rate, 4) if rate is not None else None,
            "sign_test_p": round(sign_test(wins, losses), 6),
            "decided_searches_needed": searches_needed(rate) if rate is not None else None,
        }
    ab = [(a, r) for a, r in rows if a and a.startswith("ab:")]
    if ab:
        n = {SERVING: 0, CANDIDATE: 0}
        c = {SERVING: 0, CANDIDATE: 0}
        for arm, ranks in ab:
            side = arm[3:]
            if side in n:
                n[side] += 1
                c[side] += int(len(ranks) > 0)
        z, p = two_proportion(c[SERVING], n[SERVING], c[CANDIDATE], n[CANDIDATE])
        out["ab"] = {
            "searches": n,
            "searches_with_a_click": c,
            "click_rate": {s: round(c[s] / n[s], 4) if n[s] else None for s in n},
            "z": round(z, 3),
            "p": round(p, 6),
        }
    return out
