"""Team-draft interleaving of two rankers and its preference test.

Radlinski, Kurup & Joachims (2008), "How does clickthrough data reflect retrieval quality?"; the preference
statistic follows Chapelle, Joachims, Radlinski & Yue (2012), "Large-scale validation and analysis of
interleaved search evaluation". tea-tasting has no interleaving, so this module is self-contained
(numpy + scipy).

Per request: `team_draft` builds the shown list, `credit` counts the clicks on each team's items.
Over requests: `preference_outcomes` turns credits into one outcome per unit (user or request) and
`preference_test` estimates the preference for B with a t-interval over units.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd
import scipy.stats

TEAM_A, TEAM_B = "A", "B"
_EXHAUSTED = object()  # no unshown item left in a ranking


class UniformSource(Protocol):
    """What team_draft needs from a random generator (numpy's Generator has it)."""

    def random(self) -> float: ...


def team_draft(ranking_a: Sequence[Hashable], ranking_b: Sequence[Hashable], slots: int,
               rng: UniformSource) -> tuple[list[Hashable], list[str]]:
    """Team-draft interleave two rankings (best first) into `slots` positions.

    Each round one coin flip (`rng.random() < 0.5`: team A picks first) orders the two teams; each team in turn
    appends its highest-ranked item not yet shown and labels that position with its team. Like the original
    algorithm it stops when `slots` positions are filled or when either ranking has no unshown item left.

    Returns (shown, team): the interleaved items and, per position, TEAM_A or TEAM_B. Consumes one rng draw
    per round that makes at least one pick.
    """
    rankings = {TEAM_A: ranking_a, TEAM_B: ranking_b}
    shown: list[Hashable] = []
    team: list[str] = []
    while _can_pick(rankings, shown, slots):
        a_first = rng.random() < 0.5
        for picker in (TEAM_A, TEAM_B) if a_first else (TEAM_B, TEAM_A):
            if not _can_pick(rankings, shown, slots):
                break
            shown.append(_highest_unshown(rankings[picker], shown))
            team.append(picker)
    return shown, team


def credit(team: Sequence[str], clicked_positions: Sequence[int]) -> tuple[int, int]:
    """Clicks credited to each team in one request: (wins_a, wins_b).

    `clicked_positions` are 0-based indices into the shown list; a position listed twice counts once.
    """
    positions = set(clicked_positions)
    for position in positions:
        if not 0 <= position < len(team):
            raise ValueError(f"clicked position {position} is outside the {len(team)} shown positions")
    wins_a = sum(team[p] == TEAM_A for p in positions)
    return wins_a, len(positions) - wins_a


def preference_outcomes(wins: np.ndarray, groups: Sequence[Hashable] | None = None) -> np.ndarray:
    """One outcome per unit: +1 if B got more clicks, -1 if A did, 0 for a tie; units without clicks dropped.

    wins: (n_requests, 2) click credits (wins_a, wins_b) per request, e.g. from `credit`.
    groups: optional unit of each request (e.g. user_id): credits are summed per unit first, so that the unit
    of the test is the user, not the request. Returns (n_units_with_clicks,) in {-1, 0, +1}.
    """
    wins = np.asarray(wins, dtype=float).reshape(-1, 2)  # (n_requests, 2)
    if groups is not None:
        wins = pd.DataFrame(wins).groupby(np.asarray(groups), sort=True).sum().to_numpy()  # (n_units, 2)
    wins = wins[wins.sum(axis=1) > 0]
    return np.sign(wins[:, 1] - wins[:, 0])


class Preference(NamedTuple):
    """Preference for ranker B over A: delta = (B wins - A wins) / (A wins + B wins + ties) over units."""

    delta: float  # in [-1, 1]; > 0 means B is preferred
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, H0: delta = 0
    n_units: int  # units with at least one click
    a_wins: int
    b_wins: int
    ties: int


def preference_test(wins: np.ndarray, groups: Sequence[Hashable] | None = None,
                    alpha: float = 0.05) -> Preference:
    """Preference share of B over A with a one-sample t-interval and t-test over units.

    The outcome per unit is sign(clicks on B - clicks on A) (see `preference_outcomes`); delta is its mean,
    i.e. (B wins - A wins) / (A wins + B wins + ties). The t-interval treats units as independent: pass
    `groups=user_id` when users issue several requests, or the interval is too narrow.
    """
    outcomes = preference_outcomes(wins, groups)  # (n_units,)
    test = scipy.stats.ttest_1samp(outcomes, 0.0)
    interval = test.confidence_interval(1 - alpha)
    return Preference(
        delta=float(outcomes.mean()) if len(outcomes) else float("nan"),
        ci_low=float(interval.low), ci_high=float(interval.high), p_value=float(test.pvalue),
        n_units=len(outcomes),
        a_wins=int((outcomes < 0).sum()), b_wins=int((outcomes > 0).sum()), ties=int((outcomes == 0).sum()),
    )


def _can_pick(rankings: dict[str, Sequence[Hashable]], shown: Sequence[Hashable], slots: int) -> bool:
    """A free slot, and an unshown item in both rankings (the original algorithm's stopping rule)."""
    return len(shown) < slots and all(_highest_unshown(r, shown) is not _EXHAUSTED for r in rankings.values())


def _highest_unshown(ranking: Sequence[Hashable], shown: Sequence[Hashable]) -> Hashable:
    return next((item for item in ranking if item not in shown), _EXHAUSTED)
