"""Team-draft interleaving: exact lists and teams for scripted coins, hand-checked credit and preference test."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from experiments.ab.interleaving import credit, preference_outcomes, preference_test, team_draft


class Coins:
    """A scripted rng: random() returns the given values in order (< 0.5: team A picks first)."""

    def __init__(self, *values: float):
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_a_first_then_b_first():
    # round 1, A first: A takes 1, B takes 2; round 2, B first: B takes 5, A takes 3
    assert team_draft([1, 2, 3, 4], [2, 1, 5, 3], 4, Coins(0.3, 0.7)) == ([1, 2, 5, 3], ["A", "B", "B", "A"])


def test_a_shared_top_item_goes_to_the_first_picker_and_a_full_list_stops_mid_round():
    # round 1, B first: B takes a, A's best unshown is b; round 2, A first: A takes c, no slot left for B
    coins = Coins(0.9, 0.1, 0.5)
    assert team_draft("abc", "acb", 3, coins) == (["a", "b", "c"], ["B", "A", "A"])
    assert coins.values == [0.5]  # one draw per round


def test_it_stops_when_either_ranking_runs_out():
    coins = Coins(0.2, 0.2)
    assert team_draft([1, 2], [1, 2, 3], 5, coins) == ([1, 2], ["A", "B"])
    assert coins.values == [0.2]  # no draw for a round in which nobody can pick


def test_a_seeded_numpy_generator_gives_the_hand_derived_list():
    rng = np.random.default_rng(0)
    assert (np.random.default_rng(0).random(3) < 0.5).tolist() == [False, True, True]  # B, A, A first
    # round 1, B first: c, then A: a; round 2, A first: b, then B: e; round 3, A first: d (5 slots filled)
    shown, team = team_draft(list("abcde"), list("caefb"), 5, rng)
    assert (shown, team) == (list("cabed"), ["B", "A", "A", "B", "A"])


def test_teams_stay_balanced_and_each_team_shows_its_items_in_its_own_order():
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = rng.permutation(10).tolist(), rng.permutation(10).tolist()
        shown, team = team_draft(a, b, 6, rng)
        assert len(shown) == len(set(shown)) == 6
        assert abs(team.count("A") - team.count("B")) <= 1
        for label, ranking in (("A", a), ("B", b)):
            picked = [item for item, t in zip(shown, team) if t == label]
            assert picked == sorted(picked, key=ranking.index)


@pytest.mark.parametrize("clicked, expected", [
    ([], (0, 0)),
    ([1, 2], (0, 2)),
    ([0, 3], (2, 0)),
    ([0, 1, 3], (2, 1)),
    ([2, 2], (0, 1)),  # a position listed twice counts once
])
def test_credit_counts_the_clicks_on_each_team(clicked, expected):
    assert credit(["A", "B", "B", "A"], clicked) == expected


def test_credit_rejects_a_position_that_was_not_shown():
    with pytest.raises(ValueError, match="outside the 4 shown"):
        credit(["A", "B", "B", "A"], [4])


WINS = np.array([[0, 1], [2, 1], [1, 1], [0, 0], [0, 3], [1, 0], [0, 2]])  # (wins_a, wins_b) per request


def test_preference_outcomes_drop_requests_without_clicks():
    assert preference_outcomes(WINS).tolist() == [1, -1, 0, 1, -1, 1]


def test_preference_test_is_the_hand_computed_t_interval():
    outcomes = np.array([1, -1, 0, 1, -1, 1])  # B, A, tie, B, A, B
    delta = (3 - 2) / (3 + 2 + 1)
    se = outcomes.std(ddof=1) / np.sqrt(6)
    q = scipy.stats.t.ppf(0.975, 5)
    result = preference_test(WINS)
    assert result.delta == pytest.approx(delta, rel=1e-12)
    assert (result.ci_low, result.ci_high) == pytest.approx((delta - q * se, delta + q * se), rel=1e-12)
    assert result.p_value == pytest.approx(2 * scipy.stats.t.sf(delta / se, 5), rel=1e-12)
    assert (result.n_units, result.a_wins, result.b_wins, result.ties) == (6, 2, 3, 1)


def test_groups_sum_the_credits_of_a_users_requests_first():
    groups = [7, 7, 8, 8, 9, 9, 9]  # user 7: (2, 2) tie; user 8: (1, 1) tie; user 9: (1, 5) B
    assert preference_outcomes(WINS, groups).tolist() == [0, 0, 1]
    result = preference_test(WINS, groups)
    assert (result.n_units, result.delta) == (3, pytest.approx(1 / 3))


def test_with_no_preference_the_interval_covers_zero_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    rejections = [preference_test(rng.poisson(1.0, size=(100, 2))).p_value < 0.05 for _ in range(300)]
    assert 0.02 <= np.mean(rejections) <= 0.09
