"""Team-draft interleaving of two rankers and its preference test.

Radlinski, Kurup & Joachims (2008), "How does clickthrough data reflect retrieval quality?"; the preference
statistic follows Chapelle, Joachims, Radlinski & Yue (2012), "Large-scale validation and analysis of
interleaved search evaluation". tea-tasting has no interleaving, so this module is self-contained
(numpy + scipy).

Per request: `team_draft` builds the shown list and marks its contested positions, `credit` counts the clicks on
each team's contested positions. Over requests: `preference_outcomes` turns credits into one outcome per unit
(user or request) and `preference_test` estimates the preference for B with a t-interval over units;
`exposed_outcomes` keeps every unit (0 without credited clicks), which is what a sample size must count.

Credit rule: only clicks on contested positions count. A position is uncontested when it shows the same item
whichever way the coins fall (e.g. the top item both rankers put first): its team label is then the coin alone,
so the click on it carries no information about the rankers and crediting it only adds variance. Which
positions are contested depends on the two rankings alone, never on the coins, which keeps the test fair: under
random clicks neither ranker is preferred in expectation, for the sign outcome as well as for the credit
difference (`credit`; a case of what Hofmann, Whiteson & de Rijke (2013), "Fidelity, soundness, and efficiency of
interleaved comparison methods", ACM TOIS 31(4), call fidelity: the expected outcome follows the true relevance,
here none).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd
import scipy.stats

TEAM_A, TEAM_B = "A", "B"
_EXHAUSTED = object()  # no unshown item left in a ranking


class UniformSource(Protocol):
    """What team_draft needs from a random generator (numpy's Generator has it)."""

    def random(self) -> float: ...


class Draft(NamedTuple):
    """One interleaved list: the items shown, the team of each position and whether it is contested."""

    shown: list[Hashable]
    team: list[str]  # TEAM_A or TEAM_B per position
    contested: list[bool]  # per position: some coin flips would show another item there (`contested_positions`)


def team_draft(ranking_a: Sequence[Hashable], ranking_b: Sequence[Hashable], slots: int,
               rng: UniformSource) -> Draft:
    """Team-draft interleave two rankings (best first) of the same candidates into `slots` positions.

    Each round one coin flip (`rng.random() < 0.5`: team A picks first) orders the two teams; each team in turn
    appends its highest-ranked item not yet shown and labels that position with its team. Like the original
    algorithm it stops when `slots` positions are filled or when either ranking has no unshown item left.
    Consumes one rng draw per round that makes at least one pick; `contested` comes from `contested_positions`.
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
    return Draft(shown, team, contested_positions(ranking_a, ranking_b, slots)[:len(shown)])


def contested_positions(ranking_a: Sequence[Hashable], ranking_b: Sequence[Hashable], slots: int) -> list[bool]:
    """Per position (up to `slots`): whether some sequence of coin flips would show a different item there.

    A function of the two rankings alone. Runs the draft for both coin outcomes of every round; the future of a
    draft depends only on the set of items shown so far, so branches that reach the same set are merged (a round
    in which the teams pick two different items reaches one set either way), which keeps this small.
    """
    rankings = {TEAM_A: ranking_a, TEAM_B: ranking_b}
    items: list[set] = [set() for _ in range(slots)]  # per position: every item some coin flips put there
    states, position = {frozenset()}, 0
    while states:
        next_states = set()
        for state in states:
            for order in ((TEAM_A, TEAM_B), (TEAM_B, TEAM_A)):
                shown = set(state)
                for offset, picker in enumerate(order):
                    if not _can_pick(rankings, shown, slots):
                        for k in range(position + offset, slots):  # this branch leaves the position empty
                            items[k].add(_EXHAUSTED)
                        break
                    item = _highest_unshown(rankings[picker], shown)
                    items[position + offset].add(item)
                    shown.add(item)
                else:
                    if _can_pick(rankings, shown, slots):
                        next_states.add(frozenset(shown))
                    else:
                        for k in range(position + 2, slots):
                            items[k].add(_EXHAUSTED)
        states, position = next_states, position + 2
    return [len(options) > 1 for options in items]


def credit(team: Sequence[str], contested: Sequence[bool], clicked_positions: Sequence[int]) -> tuple[int, int]:
    """Clicks on contested positions credited to each team in one request: (wins_a, wins_b).

    `team`, `contested`: per shown position, from `team_draft`; `clicked_positions` are 0-based indices into the
    shown list; a position listed twice counts once.

    Why uncontested clicks are dropped: such a position shows the same item whatever the coins, so its label is
    its round's coin alone; given the earlier rounds nothing at or above it depends on that coin, so its credit
    has mean zero whenever a click depends on the items at and above it (position-based and cascade clicks, the
    simulator's included) and dropping it leaves the expected credit difference unchanged with less variance.
    Why the rule stays fair: the credited positions are fixed by the rankings, each credited label is its round's
    coin or the opposite, so flipping every coin swaps the teams' credits; under random clicks (clicks that do not
    depend on which item is where) both teams' credit counts then have the same distribution and every outcome
    odd in B - A, the sign included, has mean zero. (Deciding "contested" from the items already shown instead,
    pick by pick, would let an earlier coin choose which later positions count and bias the sign outcome.)
    Users never see the team labels, so no click can depend on them.
    """
    if len(contested) != len(team):
        raise ValueError(f"contested has {len(contested)} positions, team has {len(team)}")
    positions = set(clicked_positions)
    for position in positions:
        if not 0 <= position < len(team):
            raise ValueError(f"clicked position {position} is outside the {len(team)} shown positions")
    credited = [team[p] for p in positions if contested[p]]
    wins_a = credited.count(TEAM_A)
    return wins_a, len(credited) - wins_a


def preference_outcomes(wins: np.ndarray, groups: Sequence[Hashable] | None = None) -> np.ndarray:
    """One outcome per unit: +1 if B got more clicks, -1 if A did, 0 for a tie; units without clicks dropped.

    wins: (n_requests, 2) click credits (wins_a, wins_b) per request, e.g. from `credit`.
    groups: optional unit of each request (e.g. user_id): credits are summed per unit first, so that the unit
    of the test is the user, not the request. Returns (n_units_with_clicks,) in {-1, 0, +1}.
    """
    wins = _unit_wins(wins, groups)
    return np.sign(wins[wins.sum(axis=1) > 0] @ [-1.0, 1.0])


def exposed_outcomes(wins: np.ndarray, groups: Sequence[Hashable] | None = None) -> np.ndarray:
    """sign(B clicks - A clicks) for every unit, 0 for units without credited clicks: (n_units,).

    The outcomes a sample size must use: an experiment enrolls users before it knows which of them will click,
    so users needed counts them all (as the A/B side does), not only those with clicks.
    """
    return np.sign(_unit_wins(wins, groups) @ [-1.0, 1.0])


class Preference(NamedTuple):
    """Preference for ranker B over A: delta = (B wins - A wins) / (A wins + B wins + ties) over units."""

    delta: float  # in [-1, 1]; > 0 means B is preferred
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, H0: delta = 0
    n_units: int  # units with at least one credited click
    a_wins: int
    b_wins: int
    ties: int


def preference_test(wins: np.ndarray, groups: Sequence[Hashable] | None = None,
                    alpha: float = 0.05) -> Preference:
    """Preference share of B over A with a one-sample t-interval and t-test over units.

    The outcome per unit is sign(credited clicks on B - on A) (see `preference_outcomes`); delta is its mean,
    i.e. (B wins - A wins) / (A wins + B wins + ties). The t-interval treats units as independent: pass
    `groups=user_id` when users issue several requests, or the interval is too narrow.
    """
    outcomes = preference_outcomes(wins, groups)  # (n_units,)
    if len(outcomes) < 2:  # no test (an A/A run with one ranker credits no click at all): nan, not a warning
        delta, low, high, p_value = float(outcomes.mean()) if len(outcomes) else np.nan, np.nan, np.nan, np.nan
    else:
        test = scipy.stats.ttest_1samp(outcomes, 0.0)
        interval = test.confidence_interval(1 - alpha)
        delta, low, high, p_value = float(outcomes.mean()), interval.low, interval.high, test.pvalue
    return Preference(
        delta=delta, ci_low=float(low), ci_high=float(high), p_value=float(p_value), n_units=len(outcomes),
        a_wins=int((outcomes < 0).sum()), b_wins=int((outcomes > 0).sum()), ties=int((outcomes == 0).sum()),
    )


def _unit_wins(wins: np.ndarray, groups: Sequence[Hashable] | None) -> np.ndarray:
    """(n_units, 2) credits summed per unit (sorted by unit), or the (n_requests, 2) credits without groups."""
    wins = np.asarray(wins, dtype=float).reshape(-1, 2)  # (n_requests, 2)
    if groups is None:
        return wins
    return pd.DataFrame(wins).groupby(np.asarray(groups), sort=True).sum().to_numpy()  # (n_units, 2)


def _can_pick(rankings: dict[str, Sequence[Hashable]], shown: Collection[Hashable], slots: int) -> bool:
    """A free slot, and an unshown item in both rankings (the original algorithm's stopping rule)."""
    return len(shown) < slots and all(_highest_unshown(r, shown) is not _EXHAUSTED for r in rankings.values())


def _highest_unshown(ranking: Sequence[Hashable], shown: Collection[Hashable]) -> Hashable:
    return next((item for item in ranking if item not in shown), _EXHAUSTED)
