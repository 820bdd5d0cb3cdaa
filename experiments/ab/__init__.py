"""A/B analysis of rankers on an experiment log: CTR and conversion lift with honest intervals.

The user is the randomisation unit, so every metric is a ratio of user-level sums analysed with the delta
method; impressions are never treated as independent. The statistics are tea-tasting's (ratio metrics, CUPED,
sample-ratio test, power, bootstrap); this package adds what tea-tasting does not do:

- `log`: validate a log (one row per (user, request) or per user; columns in its docstring) and aggregate it
  to one row per user; a bad log raises `LogError` naming the column.
- `analysis`: per-arm summary, CTR/CVR lift table with and without CUPED, SRM p-value, power/MDE, bootstrap
  cross-check.
- `interleaving`: team-draft interleaving, click credit and the preference test.
- `sensitivity`: users needed by an A/B test vs interleaving for the same change, with a bootstrap SE.
- `report`: what the notebooks in experiments/notebooks/ show (cumulative and per-segment lift, CUPED effect,
  plots) and their headless runner with an HTML copy.

Nothing here reads the simulator: the same functions take your own experiment log.

Usage:

    import pandas as pd
    from experiments.ab import analysis, log

    users = log.user_table(pd.read_parquet("my_experiment.parquet"))  # one row per user; LogError if bad
    print(analysis.srm(users))                        # SRM p-value for a 50/50 split; < 0.001: stop here
    print(analysis.arm_summary(users))                # users, impressions, clicks, conversions, ctr, cvr
    lifts = analysis.lift_table(users)                # ctr/cvr x (no CUPED, CUPED): lifts, CIs, p-values
    print(lifts[["metric", "cuped", "rel_lift", "rel_ci_low", "rel_ci_high", "p_value"]])
    print(analysis.bootstrap_lift(users, "ctr"))      # bootstrap cross-check of the CTR lift
    control = users[users["arm"] == "control"]
    print(analysis.power(control, "ctr", n_users=100_000))  # minimum detectable relative CTR lift
"""
