"""Simulated online A/B test (and interleaving) of two exported rankers on a world's test days.

    python -m experiments.ab_simulate --control exports/dcn --treatment exports/dashclip_two_tower \
        --data data/demo --config experiments/configs/ab/demo.yaml [key=value ...]

This is the one module that wires the world, the feature store's tables and served models together, like a
user's serving system would (tests/test_architecture.py: no stage imports it).

Candidates (the cheap and honest choice): each test-day request's candidate set is its rows of the test split of
the training set (data/<world>/training_sets/<version>/test): the ads the world retrieved for that request, with
the point-in-time features the online store would have served at that moment. Each arm's SavedModel scores every
candidate through the serving signature with OnlineRanker semantics (`OnlineRanker.score` on the same model
inputs; batched over many requests for speed, a test checks equality with per-request calls). Position is unknown
at ranking time, so every candidate is scored at the fixed position `score_position` (default 1, the top slot).
The top `slots` candidates by score are shown in that order.

Outcomes come from the world's hidden TRUE click model (experiments/simulate.py):
    P(click | shown at position k) = k ** -position_decay * sigmoid(attraction)
The recorded true click probability of a candidate at its logged position gives its attraction term exactly:
sigmoid(attraction) = click_prob * logged_position ** position_decay. The true conversion probability after a
click is sigmoid(conversion_bias + 0.8 [label = 2] + 0.8 affinity - 0.5 log price ratio + 1.5 discount), rebuilt
from the seeded world (build_world of world.json's config) and the logged discount. Clicks and conversions are
drawn at the positions each arm shows.

Assignment: a user is in treatment when sha256(salt:user_id) / 2**256 < treatment_share (stable across runs for
one salt). `broken_split` drops that share of the treatment arm's users from the log (another salted hash), which
a sample-ratio test must catch. Passing the same export as --control and --treatment is an A/A test.

Outputs in <out> (default <data>/experiments/<name>/), written into a staged folder renamed onto <out> at the
end (a run that fails or is killed leaves the previous <out> as it was; a killed run's MLflow run is marked
KILLED by the next run):
- log/part-00000.parquet: the `experiment_log` table (feature_store/schema/tables.py): one row per (user, request),
  with the segments query_segment (head / torso / tail by pre-period requests), user_history (returning / new) and
  new_products (some / none: the request's candidates include a product whose created_ts, in raw/products, is on
  or after the test start of world.json; the candidates, not what an arm showed, so the segment is arm-free).
- truth.json: the hidden truth: each arm's expected CTR and CVR computed exactly from the true probabilities over
  ALL test requests (both arms evaluated counterfactually on every request) and the true relative lifts.
- interleaving.json: team-draft interleaving of the two rankings on the same requests (clicks from the true model),
  its preference test and the users-needed comparison with the A/B test (experiments.ab.sensitivity).
- report.html (+ plots/): the executed notebook experiments/notebooks/01_... on the log, when `notebook` is set;
  interleaving_report.html: notebook 02 on interleaving.json.
Each run is tracked as an MLflow run in experiment `ab-tests` (lifts, intervals, SRM p-value, model versions,
links to the `pctr-ranking` runs that produced the models).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.config import (ConfigError, add_config_args, check_folder_name, config_from_args, config_to_dict, exit_on,
                         load_config)
from core.files import previous_version, staged_folder, write_text_atomically

ARMS = ("control", "treatment")
MLFLOW_EXPERIMENT = "ab-tests"
NOTEBOOK = "experiments/notebooks/01_did_the_treatment_lift_ctr_and_conversion.ipynb"
INTERLEAVING_NOTEBOOK = "experiments/notebooks/02_interleaving_vs_ab_how_many_users.ipynb"


@dataclass(frozen=True)
class AbSimConfig:
    """Every knob of the simulated experiment; YAML files under experiments/configs/ab/ override these."""

    name: str = "ab"
    embedding_version: str = ""  # "" = the only training set under <data>/training_sets/
    slots: int = 4  # ads shown per request (the top `slots` of each arm's ranking)
    score_position: int = 1  # the fixed position every candidate is scored at (position is unknown when ranking)
    treatment_share: float = 0.5
    salt: str = "ab-1"  # the assignment hash's salt: a new salt is a new random split
    seed: int = 0  # clicks, conversions and interleaving coin flips
    broken_split: float = 0.0  # share of the treatment arm's users dropped from the log (SRM)
    head_min_requests: int = 20  # query segments: head >= this many pre-period requests, torso >= 1, tail 0
    interleaving: bool = True
    sensitivity_boot: int = 300  # bootstrap resamples of the users-needed ratio
    batch_rows: int = 8192  # candidates per SavedModel call
    out: str = ""  # "" = <data>/experiments/<name>
    notebook: str = NOTEBOOK  # "" = no report
    interleaving_notebook: str = INTERLEAVING_NOTEBOOK  # "" = none (needs interleaving)
    mlflow: bool = True

    def validate(self) -> None:
        if not self.out:  # the log goes to <data>/experiments/<name>: the name must keep it there
            check_folder_name("AbSimConfig", "name", self.name)
        if self.slots < 1 or self.score_position < 1:
            raise ConfigError("slots and score_position must be >= 1")
        if self.batch_rows < 1 or self.head_min_requests < 1 or self.sensitivity_boot < 2:
            raise ConfigError(f"batch_rows and head_min_requests must be >= 1 and sensitivity_boot >= 2, got "
                              f"batch_rows={self.batch_rows}, head_min_requests={self.head_min_requests}, "
                              f"sensitivity_boot={self.sensitivity_boot}")
        if not 0 < self.treatment_share < 1:
            raise ConfigError(f"treatment_share must be in (0, 1), got {self.treatment_share}")
        if not 0 <= self.broken_split < 1:
            raise ConfigError(f"broken_split must be in [0, 1), got {self.broken_split}")


# ----------------------------------------------------------------------------------------------------------------
# candidates and their hidden truth


@dataclass
class Candidates:
    """Test-day candidates, one row per (request, candidate), grouped by request (rows of a request contiguous).

    `request` is the 0-based request index of each row; per-request arrays are indexed by it.
    """

    table: pa.Table  # the training-set rows (model inputs)
    request: np.ndarray  # (n,) request index
    attraction: np.ndarray  # (n,) sigmoid(attraction): P(click) at position 1
    conv_prob: np.ndarray  # (n,) P(conversion | click)
    position_decay: float
    request_id: np.ndarray  # (R,)
    user_id: np.ndarray  # (R,)
    query_id: np.ndarray  # (R,)
    ts: np.ndarray  # (R,) datetime64[us] UTC
    query_segment: np.ndarray  # (R,) head / torso / tail
    pre: pd.DataFrame  # user_id, pre_clicks, pre_impressions (pre-period = train + valid days)
    new_products: np.ndarray | None = None  # (R,) some / none: a candidate created on or after the test start

    @property
    def n_requests(self) -> int:
        return len(self.request_id)


def training_set_folder(data: Path, version: str) -> Path:
    root = Path(data) / "training_sets"
    if version:
        return root / version
    found = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(found) != 1:
        raise ConfigError(f"{root}: expected exactly one training set, found {[p.name for p in found]}; "
                          "set embedding_version")
    return found[0]


def world_of(data: Path):
    """The seeded world of data/<world>/world.json, rebuilt (its hidden arrays)."""
    from experiments.world import WorldConfig, build_world

    meta = json.loads((Path(data) / "world.json").read_text())
    overrides = [f"{k}={json.dumps(v)}" for k, v in meta["config"].items()]
    return build_world(load_config(WorldConfig, None, overrides))


def load_candidates(data: str | Path, embedding_version: str = "", head_min_requests: int = 20) -> Candidates:
    """The test split's training-set rows (the model inputs) with their true attraction and conversion probability."""
    folder = training_set_folder(Path(data), embedding_version)
    return candidates_from(Path(data), pq.read_table(folder / "test"), head_min_requests)


def impression_candidates(data: str | Path, head_min_requests: int = 20) -> Candidates:
    """The same candidates from the raw test-day impressions alone (no features: for rankers that need none, e.g.
    the calibration test and benchmark, which rank by known scores)."""
    data = Path(data)
    test_start = pd.Timestamp(json.loads((data / "world.json").read_text())["splits"]["test"][0])
    table = pq.read_table(data / "raw" / "impressions",
                          filters=[("ts", ">=", test_start.to_pydatetime())])
    return candidates_from(data, table, head_min_requests)


def candidates_from(data: Path, table: pa.Table, head_min_requests: int) -> Candidates:
    truth = pq.read_table(data / "hidden" / "impression_truth").to_pandas()
    frame = table.select(["impression_id", "request_id", "user_id", "query_id", "product_id", "position", "ts",
                          "discount"]).to_pandas()
    frame["row"] = np.arange(len(frame))
    frame = frame.merge(truth, on="impression_id", how="left", validate="one_to_one")
    if frame["click_prob"].isna().any():
        raise ValueError(f"{data}/hidden/impression_truth lacks some test impressions")
    frame = frame.sort_values(["request_id", "position", "row"], kind="stable")
    table = table.take(pa.array(frame["row"].to_numpy()))

    world = world_of(data)
    decay = float(world.cfg.position_decay)
    attraction = frame["click_prob"].to_numpy(float) * frame["position"].to_numpy(float) ** decay
    p = frame["product_id"].to_numpy() - 1
    u = frame["user_id"].to_numpy() - 1
    ptype = world.p_type[p]
    affinity = np.einsum("nd,nd->n", world.u_taste[u], world.type_vec[ptype])
    log_price_ratio = np.log(world.p_price[p] / world.type_price[ptype])
    conv_logit = (world.cfg.conversion_bias + 0.8 * (frame["true_label"].to_numpy() == 2) + 0.8 * affinity
                  - 0.5 * log_price_ratio + 1.5 * frame["discount"].to_numpy(float))

    request_ids, request = np.unique(frame["request_id"].to_numpy(), return_inverse=True)
    first = np.searchsorted(request, np.arange(len(request_ids)))
    # The pre-period: every impression before the test days (the incumbent ranker's traffic).
    test_start = pd.Timestamp(json.loads((data / "world.json").read_text())["splits"]["test"][0])
    pre_rows = pq.read_table(data / "raw" / "impressions", columns=["request_id", "user_id", "query_id", "click"],
                             filters=[("ts", "<", test_start.to_pydatetime())]).to_pandas()
    pre = (pre_rows.groupby("user_id").agg(pre_clicks=("click", "sum"), pre_impressions=("click", "size"))
           .reset_index())
    pre[["pre_clicks", "pre_impressions"]] = pre[["pre_clicks", "pre_impressions"]].astype(np.int64)
    query_requests = pre_rows.drop_duplicates("request_id")["query_id"].value_counts()
    n_pre = query_requests.reindex(frame["query_id"].to_numpy()[first]).fillna(0).to_numpy()
    segment = np.where(n_pre >= head_min_requests, "head", np.where(n_pre >= 1, "torso", "tail"))
    # New products: created inside the experiment window (on or after the test start). The segment is the request's
    # candidate set, which retrieval fixed before either arm ranked it, not what an arm showed (that would make the
    # segment depend on the arm and bias its lift).
    created = pq.read_table(data / "raw" / "products", columns=["product_id", "created_ts"]).to_pandas()
    created = created.set_index("product_id")["created_ts"].reindex(frame["product_id"].to_numpy())
    new = (created >= test_start).to_numpy()
    has_new = np.bincount(request, weights=new.astype(float), minlength=len(request_ids)) > 0
    ts = frame["ts"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    return Candidates(
        table=table, request=request, attraction=np.clip(attraction, 0, 1), conv_prob=1 / (1 + np.exp(-conv_logit)),
        position_decay=decay, request_id=request_ids, user_id=frame["user_id"].to_numpy()[first],
        query_id=frame["query_id"].to_numpy()[first], ts=ts[first].astype("datetime64[us]"),
        query_segment=segment, pre=pre, new_products=np.where(has_new, "some", "none"))


# ----------------------------------------------------------------------------------------------------------------
# scoring and ranking


def model_inputs(table: pa.Table, inputs: dict, score_position: int) -> dict[str, np.ndarray]:
    """The SavedModel inputs (model_info.json "inputs") of training-set rows, `position` set to score_position."""
    out = {}
    for name, entry in inputs.items():
        if name == "position":
            out[name] = np.full(table.num_rows, score_position, np.int64)
        elif len(entry["shape"]) == 2:
            column = table.column(name).combine_chunks()
            out[name] = column.values.to_numpy(zero_copy_only=False).reshape(table.num_rows, -1).astype(np.float32)
        elif entry["dtype"] == "string":
            out[name] = np.array(table.column(name).to_pylist(), dtype=object)
        else:
            out[name] = table.column(name).to_numpy()
    return out


def score(ranker, candidates: Candidates, score_position: int = 1, batch_rows: int = 8192) -> np.ndarray:
    """P(click) of every candidate by `ranker` (an OnlineRanker), batched over many requests: float32 (n,)."""
    table = candidates.table
    out = [ranker.score(model_inputs(table.slice(s, batch_rows), ranker.info["inputs"], score_position))
           for s in range(0, table.num_rows, batch_rows)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def shown_positions(request: np.ndarray, scores: np.ndarray, slots: int) -> np.ndarray:
    """1-based position of each candidate in its request's ranking by descending score (ties: candidate order),
    0 when it is not among the top `slots`."""
    order = np.lexsort((np.arange(len(scores)), -scores, request))
    rank = np.empty(len(scores), np.int64)
    starts = np.searchsorted(request[order], request[order])
    rank[order] = np.arange(len(scores)) - starts + 1
    return np.where(rank <= slots, rank, 0)


def click_prob(candidates: Candidates, positions: np.ndarray) -> np.ndarray:
    """The true P(click) of each candidate at `positions` (0 = not shown: 0)."""
    shown = positions > 0
    exam = np.where(shown, np.maximum(positions, 1).astype(float) ** -candidates.position_decay, 0.0)
    return exam * candidates.attraction


def expected_outcomes(candidates: Candidates, positions: np.ndarray) -> dict[str, float]:
    """Exact expected impressions, clicks and conversions over all requests when every request is ranked so."""
    p = click_prob(candidates, positions)
    imps, clicks, conv = float((positions > 0).sum()), float(p.sum()), float((p * candidates.conv_prob).sum())
    return {"impressions": imps, "clicks": clicks, "conversions": conv, "ctr": clicks / imps, "cvr": conv / imps}


def true_lift(candidates: Candidates, positions: dict[str, np.ndarray]) -> dict:
    """The hidden truth: both arms evaluated on every request; relative lifts treatment / control - 1."""
    arms = {arm: expected_outcomes(candidates, positions[arm]) for arm in ARMS}
    return {"arms": arms,
            **{f"true_rel_lift_{m}": arms["treatment"][m] / arms["control"][m] - 1 for m in ("ctr", "cvr")},
            **{f"true_abs_lift_{m}": arms["treatment"][m] - arms["control"][m] for m in ("ctr", "cvr")}}


# ----------------------------------------------------------------------------------------------------------------
# assignment and the experiment log


def salted_uniform(user_ids: np.ndarray, salt: str) -> np.ndarray:
    """A stable uniform in [0, 1) per user: sha256(salt:user_id) read as a 64-bit fraction."""
    return np.array([int.from_bytes(hashlib.sha256(f"{salt}:{int(u)}".encode()).digest()[:8], "big") / 2**64
                     for u in user_ids])


def assign(user_ids: np.ndarray, salt: str, treatment_share: float = 0.5) -> np.ndarray:
    """True where the user is in treatment."""
    return salted_uniform(user_ids, salt) < treatment_share


def draw_outcomes(candidates: Candidates, positions: dict[str, np.ndarray], in_treatment: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per request (R,): impressions, drawn clicks and conversions at the positions of the request's arm."""
    t_row = in_treatment[candidates.request]
    pos = np.where(t_row, positions["treatment"], positions["control"])
    p = click_prob(candidates, pos)
    click = rng.random(len(p)) < p
    conversion = click & (rng.random(len(p)) < candidates.conv_prob)
    n = candidates.n_requests
    count = lambda w: np.bincount(candidates.request, weights=w, minlength=n).astype(np.int64)  # noqa: E731
    return count(pos > 0), count(click), count(conversion)


def draw_log(candidates: Candidates, positions: dict[str, np.ndarray], in_treatment: np.ndarray,
             rng: np.random.Generator, kept: np.ndarray | None = None) -> pd.DataFrame:
    """The experiment log: one row per (user, request) with drawn clicks and conversions at the arm's positions.

    in_treatment: (R,) per request (from its user); kept: (R,) requests whose user is logged (None: all).
    """
    impressions, clicks, conversions = draw_outcomes(candidates, positions, in_treatment, rng)
    log = pd.DataFrame({
        "user_id": candidates.user_id.astype(np.int64),
        "arm": np.where(in_treatment, ARMS[1], ARMS[0]),
        "request_id": candidates.request_id.astype(np.int64),
        "ts": pd.to_datetime(candidates.ts).tz_localize("UTC"),
        "impressions": impressions, "clicks": clicks, "conversions": conversions,
        "query_segment": candidates.query_segment,
    })
    if candidates.new_products is not None:
        log["new_products"] = candidates.new_products
    log = log.merge(candidates.pre, on="user_id", how="left")
    for c in ("pre_clicks", "pre_impressions"):
        log[c] = log[c].fillna(0).astype(np.int64)
    log["user_history"] = np.where(log["pre_impressions"] > 0, "returning", "new")
    if kept is not None:
        log = log[kept].reset_index(drop=True)
    return log


def fast_user_table(candidates: Candidates, positions: dict[str, np.ndarray], salt: str,
                    rng: np.random.Generator, treatment_share: float = 0.5) -> pd.DataFrame:
    """The user table of one experiment (what log.user_table(simulate_log(...)) gives, same draws for one rng
    state) built with numpy only: for many repetitions."""
    users, user_of_request = np.unique(candidates.user_id, return_inverse=True)
    treated = assign(users, salt, treatment_share)
    counts = draw_outcomes(candidates, positions, treated[user_of_request], rng)
    sums = [np.bincount(user_of_request, weights=c, minlength=len(users)).astype(np.int64) for c in counts]
    pre = candidates.pre.set_index("user_id").reindex(users).fillna(0).astype(np.int64)
    return pd.DataFrame({"user_id": users, "arm": np.where(treated, ARMS[1], ARMS[0]), "impressions": sums[0],
                         "clicks": sums[1], "conversions": sums[2], "pre_clicks": pre["pre_clicks"].to_numpy(),
                         "pre_impressions": pre["pre_impressions"].to_numpy()})


def simulate_log(candidates: Candidates, positions: dict[str, np.ndarray], salt: str, seed: int,
                 treatment_share: float = 0.5, broken_split: float = 0.0) -> pd.DataFrame:
    """One experiment: split users by `salt`, draw outcomes with `seed`, drop `broken_split` of treatment users."""
    users = np.unique(candidates.user_id)
    treated = dict(zip(users, assign(users, salt, treatment_share)))
    in_treatment = np.array([treated[u] for u in candidates.user_id])
    kept = None
    if broken_split > 0:
        dropped = dict(zip(users, salted_uniform(users, salt + ":broken") < broken_split))
        kept = ~(in_treatment & np.array([dropped[u] for u in candidates.user_id]))
    return draw_log(candidates, positions, in_treatment, np.random.default_rng(seed), kept)


def repetitions(candidates: Candidates, positions: dict[str, np.ndarray], n: int, seed: int = 0,
                treatment_share: float = 0.5, alpha: float = 0.05) -> pd.DataFrame:
    """`n` experiments on fixed scored requests, each with a new split salt and new click and conversion draws.

    One row per (rep, metric, cuped): rel_lift, rel_ci_low, rel_ci_high, p_value, true_rel_lift, covered (the
    interval holds the true lift), rejected (p < alpha). With positions["control"] == positions["treatment"] (A/A)
    the true lift is 0, so `covered` is `not rejected` up to the log-scale interval.
    """
    from experiments.ab import analysis

    truth = true_lift(candidates, positions)
    rows = []
    for rep in range(n):
        users = fast_user_table(candidates, positions, f"rep-{seed}-{rep}", np.random.default_rng([seed, rep]),
                                treatment_share)
        table = analysis.lift_table(users, alpha=alpha)
        for row in table.itertuples():
            true = truth[f"true_rel_lift_{row.metric}"]
            rows.append({"rep": rep, "metric": row.metric, "cuped": row.cuped, "rel_lift": row.rel_lift,
                         "rel_ci_low": row.rel_ci_low, "rel_ci_high": row.rel_ci_high, "p_value": row.p_value,
                         "true_rel_lift": true, "covered": row.rel_ci_low <= true <= row.rel_ci_high,
                         "rejected": row.p_value < alpha})
    return pd.DataFrame(rows)


def calibration_rates(reps: pd.DataFrame) -> pd.DataFrame:
    """Per (metric, cuped): repetitions, coverage of the true lift, rejection rate, mean CI width."""
    reps = reps.assign(ci_width=reps["rel_ci_high"] - reps["rel_ci_low"])
    return (reps.groupby(["metric", "cuped"]).agg(n=("rep", "size"), coverage=("covered", "mean"),
                                                  rejection=("rejected", "mean"), ci_width=("ci_width", "mean"),
                                                  true_rel_lift=("true_rel_lift", "first"))
            .reset_index())


# ----------------------------------------------------------------------------------------------------------------
# interleaving on the same requests


def interleave(candidates: Candidates, scores: dict[str, np.ndarray], slots: int, rng: np.random.Generator):
    """Team-draft interleaving (A = control, B = treatment) of every request; clicks from the true model.

    Returns (wins (R, 2) credits (A, B) of the clicks on contested positions (interleaving.credit), clicks (R,),
    impressions (R,), contested (R,) contested positions shown).
    """
    from experiments.ab.interleaving import credit, team_draft

    starts = np.searchsorted(candidates.request, np.arange(candidates.n_requests + 1))
    wins = np.zeros((candidates.n_requests, 2), np.int64)
    clicks = np.zeros(candidates.n_requests, np.int64)
    imps = np.zeros(candidates.n_requests, np.int64)
    contested = np.zeros(candidates.n_requests, np.int64)
    decay = candidates.position_decay
    for r in range(candidates.n_requests):
        lo, hi = starts[r], starts[r + 1]
        rank_a = list(lo + np.argsort(-scores["control"][lo:hi], kind="stable"))
        rank_b = list(lo + np.argsort(-scores["treatment"][lo:hi], kind="stable"))
        draft = team_draft(rank_a, rank_b, slots, rng)
        idx = np.asarray(draft.shown, np.int64)
        p = np.arange(1, len(idx) + 1, dtype=float) ** -decay * candidates.attraction[idx]
        clicked = np.flatnonzero(rng.random(len(idx)) < p)
        wins[r] = credit(draft.team, draft.contested, clicked.tolist())
        clicks[r], imps[r], contested[r] = len(clicked), len(idx), sum(draft.contested)
    return wins, clicks, imps, contested


def interleaving_summary(candidates: Candidates, scores: dict[str, np.ndarray], log: pd.DataFrame, slots: int,
                         seed: int, n_boot: int = 300) -> dict:
    """Preference test of the interleaving on the same requests and users needed by each design (sensitivity).

    Both designs count every user with a test request: the interleaving outcome of a user without credited clicks
    is 0 (interleaving.exposed_outcomes), as a user without clicks is counted by the A/B test.
    """
    from experiments.ab import log as ablog
    from experiments.ab.interleaving import exposed_outcomes, preference_test
    from experiments.ab.sensitivity import users_ratio

    wins, _, imps, contested = interleave(candidates, scores, slots, np.random.default_rng([seed, 1]))
    pref = preference_test(wins, groups=candidates.user_id)
    users = ablog.user_table(log)
    per_arm = [users.loc[users["arm"] == arm, ["clicks", "impressions"]].to_numpy(float) for arm in ARMS]
    outcomes = exposed_outcomes(wins, candidates.user_id)  # (n_users,)
    ratio = users_ratio(per_arm[0], per_arm[1], outcomes, n_boot=n_boot, seed=seed)
    return {"preference": pref._asdict(),
            "credit": {"rule": "clicks on contested positions only", "contested_share": contested.sum() / imps.sum(),
                       "users": len(outcomes)},
            "users_needed": {"ab_total": 2 * ratio.ab.users, "ab_per_arm": ratio.ab.users,
                             "interleaving": ratio.interleaving.users, "ratio": ratio.ratio, "ratio_se": ratio.se,
                             "ratio_ci": [ratio.ci_low, ratio.ci_high],
                             "ab_effect": ratio.ab.effect, "interleaving_effect": ratio.interleaving.effect}}


# ----------------------------------------------------------------------------------------------------------------
# the whole run


def write_log(log: pd.DataFrame, folder: Path) -> Path:
    from feature_store.schema import write_table

    table = pa.Table.from_pandas(log, preserve_index=False)
    return write_table("experiment_log", table, folder)


def model_version(export: Path) -> tuple[Path, dict]:
    from ranking.serving.contract import read_model_info, resolve_version_dir

    version_dir = resolve_version_dir(export)
    return version_dir, read_model_info(version_dir)


def run(cfg: AbSimConfig, control: str | Path, treatment: str | Path, data: str | Path) -> dict:
    """Simulate, write the log and truth, interleave, report and track; returns the summary dict."""
    from ranking.serving.online import OnlineRanker

    data = Path(data)
    if not (data / "world.json").is_file():
        raise ConfigError(f"--data {data}: no world.json (expected a simulated world folder, e.g. data/demo)")
    out = Path(cfg.out) if cfg.out else data / "experiments" / cfg.name
    exports, infos = {}, {}
    for arm, export in {"control": Path(control), "treatment": Path(treatment)}.items():
        try:  # both models checked before the (slow) candidate load
            exports[arm], infos[arm] = model_version(export)
        except ValueError as err:
            raise ConfigError(f"--{arm}: {err}") from None
    candidates = load_candidates(data, cfg.embedding_version, cfg.head_min_requests)
    scores = {}
    for arm, version_dir in exports.items():
        if arm == "treatment" and version_dir.resolve() == exports["control"].resolve():
            scores[arm] = scores["control"]  # A/A: the same model
            continue
        scores[arm] = score(OnlineRanker(version_dir), candidates, cfg.score_position, cfg.batch_rows)
    positions = {arm: shown_positions(candidates.request, scores[arm], cfg.slots) for arm in ARMS}
    truth = true_lift(candidates, positions)
    truth.update(score_position=cfg.score_position, slots=cfg.slots, requests=candidates.n_requests,
                 aa=bool(exports["control"].resolve() == exports["treatment"].resolve()))
    log = simulate_log(candidates, positions, cfg.salt, cfg.seed, cfg.treatment_share, cfg.broken_split)
    # Everything goes into a staged folder renamed onto <out> at the end: a reader (or a run killed midway) never
    # sees a new log beside an old truth.json; a rerun writes the whole folder again.
    with staged_folder(out, old=previous_version(out)) as tmp:
        tmp.chmod(0o755)
        summary = _write_outputs(cfg, tmp, out, candidates, scores, log, truth, infos, exports)
    return summary


def _write_outputs(cfg: AbSimConfig, tmp: Path, out: Path, candidates: Candidates, scores: dict, log: pd.DataFrame,
                   truth: dict, infos: dict, exports: dict) -> dict:
    """The log, truth, interleaving, reports, MLflow run and summary, written into `tmp` (the staged `out`);
    the paths recorded are the final ones under `out`."""
    log_path = write_log(log, tmp / "log")
    write_text_atomically(tmp / "truth.json", json.dumps(truth, indent=2) + "\n")
    summary = {"log": str(out / log_path.relative_to(tmp)), "truth": truth, "config": config_to_dict(cfg),
               "models": {arm: str(exports[arm]) for arm in ARMS}}
    if cfg.interleaving:
        summary["interleaving"] = interleaving_summary(candidates, scores, log, cfg.slots, cfg.seed,
                                                       cfg.sensitivity_boot)
        write_text_atomically(tmp / "interleaving.json", json.dumps(summary["interleaving"], indent=2) + "\n")
    html = None
    parameters = {"LOG": str(log_path), "TRUTH": str(tmp / "truth.json"),
                  "INTERLEAVING": str(tmp / "interleaving.json") if cfg.interleaving else "",
                  "TREATMENT_SHARE": cfg.treatment_share}
    if cfg.notebook:
        from experiments.ab.report import execute_notebook

        html = execute_notebook(cfg.notebook, tmp / "report.html", parameters)
        summary["report"] = str(out / "report.html")
    if cfg.interleaving and cfg.interleaving_notebook:
        from experiments.ab.report import execute_notebook

        execute_notebook(cfg.interleaving_notebook, tmp / "interleaving_report.html", parameters)
        summary["interleaving_report"] = str(out / "interleaving_report.html")
    if cfg.mlflow:
        summary["mlflow_run_id"] = track(cfg, log, truth, summary.get("interleaving"), infos, exports, html, tmp)
    write_text_atomically(tmp / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def track(cfg: AbSimConfig, log: pd.DataFrame, truth: dict, interleaving: dict | None, infos: dict,
          exports: dict, html: Path | None, out: Path) -> str:
    """One MLflow run in experiment `ab-tests`: lifts, intervals, SRM, model versions, parent-run links."""
    import mlflow

    from core.tracking import end_dead_runs, flatten, owner_tags, setup_mlflow
    from experiments.ab import analysis
    from experiments.ab import log as ablog
    from experiments.ab.report import lift_plot

    users = ablog.user_table(log)
    lifts = analysis.lift_table(users)
    end_dead_runs(setup_mlflow(MLFLOW_EXPERIMENT))  # runs of killed simulations: KILLED, not RUNNING for ever
    with mlflow.start_run(run_name=cfg.name, tags=owner_tags()) as active:
        mlflow.log_params(flatten(config_to_dict(cfg), "ab."))
        mlflow.log_params({f"{arm}_model": f"{infos[arm].get('model', '')}/{exports[arm].name}" for arm in ARMS})
        for arm in ARMS:
            info = infos[arm]
            mlflow.set_tags({f"{arm}.model": info.get("model", ""), f"{arm}.export": str(exports[arm]),
                             f"{arm}.version": exports[arm].name,
                             f"{arm}.model_run_id": info.get("mlflow_run_id", ""),
                             f"{arm}.pctr_ranking_parent_run_id": info.get("mlflow_parent_run_id", ""),
                             f"{arm}.embedding_version": info.get("embedding_version", "")})
        metrics = {"srm_p_value": analysis.srm(users, treatment_share=cfg.treatment_share),
                   **{k: v for k, v in truth.items() if k.startswith("true_")}}
        for row in lifts.itertuples():
            tag = f"{row.metric}{'_cuped' if row.cuped else ''}"
            metrics.update({f"{tag}/rel_lift": row.rel_lift, f"{tag}/rel_ci_low": row.rel_ci_low,
                            f"{tag}/rel_ci_high": row.rel_ci_high, f"{tag}/abs_lift": row.abs_lift,
                            f"{tag}/p_value": row.p_value})
        if interleaving:
            metrics.update({"interleaving/delta": interleaving["preference"]["delta"],
                            "interleaving/p_value": interleaving["preference"]["p_value"],
                            "users_needed/ratio": interleaving["users_needed"]["ratio"],
                            "users_needed/ratio_ci_low": interleaving["users_needed"]["ratio_ci"][0],
                            "users_needed/ratio_ci_high": interleaving["users_needed"]["ratio_ci"][1]})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        plots = out / "plots"
        plots.mkdir(exist_ok=True)
        figure = lift_plot(lifts, truth)
        figure.savefig(plots / "lift.png", dpi=100, bbox_inches="tight")
        mlflow.log_artifacts(str(plots), "plots")
        for name in ("truth.json", "interleaving.json"):
            if (out / name).is_file():
                mlflow.log_artifact(str(out / name))
        for name in ("report.html", "interleaving_report.html"):
            if (out / name).is_file():
                mlflow.log_artifact(str(out / name))
        return active.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.ab_simulate", description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--control", required=True, help="control export (model folder or version folder)")
    parser.add_argument("--treatment", required=True, help="treatment export (the same as --control: an A/A test)")
    parser.add_argument("--data", required=True, type=Path, help="the world folder, e.g. data/demo")
    args = parser.parse_args(argv)
    cfg = config_from_args(AbSimConfig, args)
    summary = run(cfg, args.control, args.treatment, args.data)
    truth = summary["truth"]
    print(f"log: {summary['log']}")
    print(f"true CTR control {truth['arms']['control']['ctr']:.4f} treatment {truth['arms']['treatment']['ctr']:.4f}"
          f" (true lift {truth['true_rel_lift_ctr']:+.2%}); true CVR lift {truth['true_rel_lift_cvr']:+.2%}")
    if "interleaving" in summary:
        u = summary["interleaving"]["users_needed"]
        print(f"users needed (80% power): A/B {u['ab_total']:.0f}, interleaving {u['interleaving']:.0f}, "
              f"ratio {u['ratio']:.2f} [95% bootstrap interval {u['ratio_ci'][0]:.2f}, {u['ratio_ci'][1]:.2f}]")
    if "report" in summary:
        print(f"report: {summary['report']}")
    return 0


if __name__ == "__main__":
    from experiments.ab.log import LogError

    exit_on(main, ConfigError, LogError)
