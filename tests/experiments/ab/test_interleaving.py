"""Team-draft interleaving: exact lists, teams and contested positions for scripted coins, hand-checked credit
(contested positions only), its fairness under random clicks (exact) and the preference test."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats

from experiments.ab.interleaving import (contested_positions, credit, exposed_outcomes, preference_outcomes,
                                        preference_test, team_draft)


class Coins:
    """A scripted rng: random() returns the given values in order (< 0.5: team A picks first)."""

    def __init__(self, *values: float):
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_a_first_then_b_first():
    # round 1, A first: A takes 1, B takes 2; round 2, B first: B takes 5, A takes 3
    draft = team_draft([1, 2, 3, 4], [2, 1, 5, 3], 4, Coins(0.3, 0.7))
    assert (draft.shown, draft.team) == ([1, 2, 5, 3], ["A", "B", "B", "A"])
    # round 1 shows {1, 2} in either order; round 2 shows 3 or 5 in either slot: every position is contested
    assert draft.contested == [True, True, True, True]


def test_a_shared_top_item_goes_to_the_first_picker_and_a_full_list_stops_mid_round():
    # round 1, B first: B takes a, A's best unshown is b; round 2, A first: A takes c, no slot left for B
    coins = Coins(0.9, 0.1, 0.5)
    assert team_draft("abc", "acb", 3, coins) == (["a", "b", "c"], ["B", "A", "A"], [False, True, True])
    assert coins.values == [0.5]  # one draw per round


def test_it_stops_when_either_ranking_runs_out():
    coins = Coins(0.2, 0.2)
    assert team_draft([1, 2], [1, 2, 3], 5, coins) == ([1, 2], ["A", "B"], [False, False])
    assert coins.values == [0.2]  # no draw for a round in which nobody can pick


def test_a_seeded_numpy_generator_gives_the_hand_derived_list():
    rng = np.random.default_rng(0)
    assert (np.random.default_rng(0).random(3) < 0.5).tolist() == [False, True, True]  # B, A, A first
    # round 1, B first: c, then A: a; round 2, A first: b, then B: e; round 3, A first: d (5 slots filled)
    shown, team, _ = team_draft(list("abcde"), list("caefb"), 5, rng)
    assert (shown, team) == (list("cabed"), ["B", "A", "A", "B", "A"])


def test_teams_stay_balanced_and_each_team_shows_its_items_in_its_own_order():
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = rng.permutation(10).tolist(), rng.permutation(10).tolist()
        shown, team, _ = team_draft(a, b, 6, rng)
        assert len(shown) == len(set(shown)) == 6
        assert abs(team.count("A") - team.count("B")) <= 1
        for label, ranking in (("A", a), ("B", b)):
            picked = [item for item, t in zip(shown, team) if t == label]
            assert picked == sorted(picked, key=ranking.index)


def test_identical_rankings_have_no_contested_position_and_never_credit_a_click():
    rng = np.random.default_rng(2)
    for _ in range(50):
        ranking = rng.permutation(8).tolist()
        shown, team, contested = team_draft(ranking, ranking, 4, rng)
        assert shown == ranking[:4] and contested == [False] * 4
        assert credit(team, contested, [0, 1, 2, 3]) == (0, 0)


def test_a_shared_first_pick_is_uncontested_and_the_second_pick_contested():
    # both rankers put x first: x is shown first whoever picks it; the second picker shows its own next item
    for coins, expected in (((0.3, 0.3), (["x", "b", "a", "c"], ["A", "B", "A", "B"])),
                            ((0.7, 0.3), (["x", "a", "b", "c"], ["B", "A", "A", "B"]))):
        shown, team, contested = team_draft(list("xabc"), list("xbac"), 4, Coins(*coins))
        assert (shown, team) == expected
        assert contested == [False, True, True, False]  # the 4th slot shows c under every coin
        assert credit(team, contested, [0, 1, 3]) == ((0, 1) if coins[0] < 0.5 else (1, 0))  # only slot 1 counts


def test_contested_positions_depend_on_the_rankings_not_on_the_coins():
    """After a shared x, B's pick b (A first) or A's pick a (B first) decides round 2: A first leaves a vs c
    contested; B first leaves b shared, then c shared. Each of slots 2 and 3 shows different items under different
    coins, so both are contested under every coin; deciding "contested" from the items already shown would mark
    them uncontested after B-first only, letting the first coin choose which later clicks count."""
    assert contested_positions(list("xabc"), list("xbca"), 4) == [False, True, True, True]
    for coins in ((0.3, 0.3), (0.3, 0.7), (0.7, 0.3), (0.7, 0.7)):
        assert team_draft(list("xabc"), list("xbca"), 4, Coins(*coins)).contested == [False, True, True, True]
    # a round that shows {a, b} in either order leaves one state: the shared c after it is uncontested
    assert contested_positions(list("abcd"), list("bace"), 4) == [True, True, False, True]


@pytest.mark.parametrize("clicked, expected", [
    ([], (0, 0)),
    ([1, 2], (0, 2)),
    ([0, 3], (2, 0)),
    ([0, 1, 3], (2, 1)),
    ([2, 2], (0, 1)),  # a position listed twice counts once
])
def test_credit_counts_the_clicks_on_each_team(clicked, expected):
    assert credit(["A", "B", "B", "A"], [True] * 4, clicked) == expected


def test_credit_ignores_clicks_on_uncontested_positions():
    assert credit(["A", "B", "B", "A"], [False, True, True, False], [0, 1, 3]) == (0, 1)
    assert credit(["A", "B", "B", "A"], [False, True, False, True], [0, 1, 2, 3]) == (1, 1)


def test_credit_rejects_a_position_that_was_not_shown_and_a_contested_list_of_another_length():
    with pytest.raises(ValueError, match="outside the 4 shown"):
        credit(["A", "B", "B", "A"], [True] * 4, [4])
    with pytest.raises(ValueError, match="contested has 3 positions, team has 4"):
        credit(["A", "B", "B", "A"], [True] * 3, [0])


def exact_expectations(ranking_a, ranking_b, slots, click_prob):
    """E[B - A credits] and E[sign(B - A)] over every coin sequence and click set, for clicks at position k with
    probability click_prob(item, k) independently."""
    rounds = (slots + 1) // 2
    mean_diff = mean_sign = 0.0
    for coins in itertools.product((0.2, 0.8), repeat=rounds):
        shown, team, contested = team_draft(ranking_a, ranking_b, slots, Coins(*coins))
        probs = [click_prob(item, k) for k, item in enumerate(shown)]
        for clicks in itertools.product((0, 1), repeat=len(shown)):
            weight = np.prod([p if c else 1 - p for p, c in zip(probs, clicks)]) / 2**rounds
            a, b = credit(team, contested, [k for k, c in enumerate(clicks) if c])
            mean_diff += weight * (b - a)
            mean_sign += weight * np.sign(b - a)
    return mean_diff, mean_sign


def test_under_random_clicks_neither_ranker_is_preferred_exactly():
    """Clicks that depend on the position only: both the expected credit difference and the expected sign are 0,
    exactly (all coin sequences and click sets enumerated), for pairs of rankings that share items at all
    depths, including the hand case in which a per-pick "contested" would favour A."""
    pairs = [(list("xabc"), list("xbca"))]
    rng = np.random.default_rng(3)
    pairs += [(rng.permutation(6).tolist(), rng.permutation(6).tolist()) for _ in range(30)]
    for a, b in pairs:
        for slots in (3, 4):
            diff, sign = exact_expectations(a, b, slots, lambda item, k: 0.4 / (k + 1))
            assert abs(diff) < 1e-12 and abs(sign) < 1e-12, (a, b, slots)


def test_with_equal_click_probabilities_the_mean_preference_is_zero_and_a_better_b_wins():
    """Many simulated requests of random rankings: with position-only clicks (the same for both teams) the mean
    per-request preference is within 3 SE of 0; when clicks follow item quality and B ranks by it, B wins."""
    rng = np.random.default_rng(4)
    quality = np.linspace(0.05, 0.6, 8)  # P(click) of item i at the top
    null, better = [], []
    for _ in range(4000):
        a = rng.permutation(8).tolist()
        b_random = (a[:1] + rng.permutation(a[1:]).tolist()) if rng.random() < 0.5 else rng.permutation(8).tolist()
        b_best = np.argsort(-(quality + rng.normal(0, 0.1, 8))).tolist()
        for b, use_quality, out in ((b_random, False, null), (b_best, True, better)):
            shown, team, contested = team_draft(a, b, 4, rng)
            p = [(quality[i] if use_quality else 0.3) / (k + 1) for k, i in enumerate(shown)]
            wins = credit(team, contested, np.flatnonzero(rng.random(4) < p).tolist())
            out.append(wins)
    null_outcomes = preference_outcomes(np.array(null))
    se = null_outcomes.std(ddof=1) / np.sqrt(len(null_outcomes))
    assert abs(null_outcomes.mean()) < 3 * se
    result = preference_test(np.array(better))
    assert result.delta > 0 and result.p_value < 1e-6


WINS = np.array([[0, 1], [2, 1], [1, 1], [0, 0], [0, 3], [1, 0], [0, 2]])  # (wins_a, wins_b) per request


def test_preference_outcomes_drop_requests_without_clicks():
    assert preference_outcomes(WINS).tolist() == [1, -1, 0, 1, -1, 1]


def test_a_preference_test_without_two_units_with_credited_clicks_is_nan_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        none = preference_test(np.zeros((5, 2)))  # an A/A run with one ranker: no contested click anywhere
        one = preference_test(np.array([[0.0, 2.0], [0.0, 0.0]]))
    assert none.n_units == 0 and np.isnan([none.delta, none.ci_low, none.ci_high, none.p_value]).all()
    assert one.n_units == 1 and one.delta == 1.0 and np.isnan([one.ci_low, one.ci_high, one.p_value]).all()


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


def test_exposed_outcomes_keep_every_unit_with_zero_for_units_without_clicks():
    assert exposed_outcomes(WINS).tolist() == [1, -1, 0, 0, 1, -1, 1]
    groups = [7, 7, 8, 8, 9, 9, 6]  # user 6: (0, 2) B; 7: (2, 2) tie; 8: (1, 1) tie; 9: (1, 3) B
    assert exposed_outcomes(WINS, groups).tolist() == [1, 0, 0, 1]
    assert exposed_outcomes([[0, 0], [0, 0], [3, 1]], [5, 5, 4]).tolist() == [-1, 0]  # user 5: no clicks, kept


def test_groups_sum_the_credits_of_a_users_requests_first():
    groups = [7, 7, 8, 8, 9, 9, 9]  # user 7: (2, 2) tie; user 8: (1, 1) tie; user 9: (1, 5) B
    assert preference_outcomes(WINS, groups).tolist() == [0, 0, 1]
    result = preference_test(WINS, groups)
    assert (result.n_units, result.delta) == (3, pytest.approx(1 / 3))


def test_with_no_preference_the_interval_covers_zero_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    rejections = [preference_test(rng.poisson(1.0, size=(100, 2))).p_value < 0.05 for _ in range(300)]
    assert 0.02 <= np.mean(rejections) <= 0.09
