"""Calibration of the A/B analysis against the TRUE lift, by repeated seeded simulation on a world's test days:

    python -m benchmarks.ab_bench [--data data/tiny] [--reps 400] [--null-reps 400] [--slots 4] [--seed 0]

Candidates are the test-day requests' logged ads (experiments.ab_simulate.impression_candidates); control ranks
them in the incumbent's logged order, treatment by their true attraction (an oracle ranker: a real lift; its size
is computed exactly from the world's click model, both arms on every request). Each repetition re-draws the user
split (a new salt) and the clicks and conversions, on the same scored requests; A/A repetitions show the control
ranking in both arms (true lift 0).

    coverage/<metric>[/cuped]    share of A/B repetitions whose 95% delta-method interval of the relative lift holds
                                 the true lift (expected 0.95)
    rejection_aa/<metric>[/cuped] share of A/A repetitions with p < 0.05 (expected 0.05)
    power_ab/<metric>[/cuped]    share of A/B repetitions with p < 0.05
    ci_width_ab/<metric>[/cuped] mean width of the relative-lift interval
    users_needed_ratio_ab_over_interleaving  users an A/B test on CTR needs (both arms) / users interleaving needs,
                                 80% power, 5% two-sided, with its bootstrap SE (one simulated experiment); both
                                 count every user with a test request; interleaving credits only the clicks on
                                 contested positions (experiments.ab.interleaving.credit)
    rejection_null/interleaving  share of --null-reps interleaving experiments with p < 0.05 between two different
                                 rankers of equal quality (expected 0.05): each ranks by its own Plackett-Luce draw
                                 from the true attraction (log attraction + Gumbel noise, independent per ranker and
                                 repetition), so the two are exchangeable; identical rankers would have no contested
                                 position, hence no credited click at all
Each line carries the counts (n, hits) and a binomial standard error. Without --data the tiny world is generated in
a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from benchmarks.common import record
from experiments import ab_simulate as sim

WORLD_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "world" / "tiny.yaml"


def run(data: Path, reps: int, slots: int, seed: int, null_reps: int) -> list[dict]:
    candidates = sim.impression_candidates(data)
    logged = -candidates.table.column("position").to_numpy().astype(float)
    control = sim.shown_positions(candidates.request, logged, slots)
    ab = {"control": control, "treatment": sim.shown_positions(candidates.request, candidates.attraction, slots)}
    aa = {"control": control, "treatment": control}
    truth = sim.true_lift(candidates, ab)
    config = f"{data.name} slots={slots} reps={reps} seed={seed}"
    common = {"users": int(len(np.unique(candidates.user_id))), "requests": candidates.n_requests,
              "true_rel_lift_ctr": truth["true_rel_lift_ctr"], "true_rel_lift_cvr": truth["true_rel_lift_cvr"]}
    out = []
    started = time.perf_counter()
    rates = {"ab": sim.repetitions(candidates, ab, reps, seed=seed),
             "aa": sim.repetitions(candidates, aa, reps, seed=seed + 1)}
    seconds = time.perf_counter() - started
    for kind, frame in rates.items():
        for (metric, cuped), part in frame.groupby(["metric", "cuped"]):
            suffix = f"{metric}{'/cuped' if cuped else ''}"
            n = len(part)
            measures = ({"coverage": part["covered"], "power_ab": part["rejected"]} if kind == "ab"
                        else {"rejection_aa": part["rejected"], "coverage_aa": part["covered"]})
            for name, hits in measures.items():
                share = float(hits.mean())
                out.append(record("ab_bench", f"{name}/{suffix}", share, "share", config, n=n, hits=int(hits.sum()),
                                  se=float(np.sqrt(share * (1 - share) / n)), **common))
            if kind == "ab":
                width = float((part["rel_ci_high"] - part["rel_ci_low"]).mean())
                out.append(record("ab_bench", f"ci_width_ab/{suffix}", width, "relative lift", config, n=n, **common))
    out.append(record("ab_bench", "seconds_per_repetition", seconds / (2 * reps), "s", config, **common))
    # Sensitivity: users needed at 80% power, 5% two-sided, A/B on CTR (both arms) vs interleaving, same change.
    scores = {"control": logged, "treatment": candidates.attraction}
    log = sim.simulate_log(candidates, ab, f"sensitivity-{seed}", seed)
    summary = sim.interleaving_summary(candidates, scores, log, slots, seed, n_boot=500)
    needed = summary["users_needed"]
    out.append(record("ab_bench", "users_needed_ratio_ab_over_interleaving", needed["ratio"], "ratio", config,
                      se=needed["ratio_se"], ci=needed["ratio_ci"], ab_users=needed["ab_total"],
                      interleaving_users=needed["interleaving"], credit=summary["credit"]["rule"],
                      contested_share=summary["credit"]["contested_share"], **common))
    started = time.perf_counter()
    rejected, shares = interleaving_null(candidates, slots, null_reps, seed)
    share = float(rejected.mean())
    out.append(record("ab_bench", "rejection_null/interleaving", share, "share", f"{config} null_reps={null_reps}",
                      n=null_reps, hits=int(rejected.sum()), se=float(np.sqrt(share * (1 - share) / null_reps)),
                      contested_share=float(shares.mean()),
                      seconds_per_repetition=(time.perf_counter() - started) / null_reps, **common))
    return out


def interleaving_null(candidates: sim.Candidates, slots: int, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per repetition: did the preference test (users as units) reject at 5%, and the contested share of shown
    positions, for two exchangeable rankers (independent Plackett-Luce draws from the true attraction)."""
    from experiments.ab.interleaving import preference_test

    log_attraction = np.log(np.clip(candidates.attraction, 1e-12, None))
    rejected, shares = np.zeros(reps, bool), np.zeros(reps)
    for rep in range(reps):
        rng = np.random.default_rng([seed, 2, rep])
        scores = {arm: log_attraction + rng.gumbel(size=len(log_attraction)) for arm in sim.ARMS}
        wins, _, imps, contested = sim.interleave(candidates, scores, slots, rng)
        rejected[rep] = preference_test(wins, groups=candidates.user_id).p_value < 0.05
        shares[rep] = contested.sum() / imps.sum()
    return rejected, shares


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="a world folder (default: the tiny world, generated)")
    parser.add_argument("--reps", type=int, default=400, help="A/A and A/B repetitions each (>= 400 for the record)")
    parser.add_argument("--null-reps", type=int, default=400,
                        help="interleaving experiments between equally good rankers (the null rejection rate)")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.data is not None:
        run(args.data, args.reps, args.slots, args.seed, args.null_reps)
        return 0
    from core.config import load_config
    from experiments.simulate import simulate
    from experiments.world import WorldConfig

    with TemporaryDirectory() as tmp:
        data = Path(tmp) / "tiny"
        simulate(load_config(WorldConfig, WORLD_CONFIG), data, progress=False)
        run(data, args.reps, args.slots, args.seed, args.null_reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
