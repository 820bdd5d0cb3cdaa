"""ranking.models / trainer / saved_model on tiny configs: shapes, what each tower sees, sparse updates,
resumable checkpoints, and the SavedModel round trip."""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers.training_sets import make_training_set

from ranking.config import MODEL_KINDS, NetConfig, TrainConfig
from ranking.data import FeatureConfig, load_training_set, make_dataset

tf = pytest.importorskip("ranking._tf").tf
from ranking.models import build_model, fit_preprocessing, matmul_flops_per_example  # noqa: E402
from ranking.trainer import compile_model, fit_model, predict  # noqa: E402

NET = NetConfig(id_embedding_dim=4, cross_layers=1, cross_projection_dim=8, deep_layers=(16,),
                content_projection_dim=8, head_layers=(8,), id_dropout=0.0)
TRAIN = TrainConfig(epochs=2, batch_size=256, eval_batch_size=4096)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = make_training_set(tmp_path_factory.mktemp("rank_models"), n_requests=500)
    return load_training_set(folder, FeatureConfig())


@pytest.fixture(scope="module")
def prep(data):
    return fit_preprocessing(data["train"], data.spec, FeatureConfig(), data.impute_values)


def _batch(data, n=64, split="test"):
    features, labels = next(iter(make_dataset(data[split], data.spec, n)))
    return features, labels


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_shapes_and_which_inputs_matter(kind, data, prep):
    tf.keras.utils.set_random_seed(0)
    model = build_model(kind, data.spec, prep, NET)
    features, _ = _batch(data)
    with tf.GradientTape() as tape:
        tape.watch([features["query_embedding"], features["history_embedding"]])
        logits = model(features)
    assert logits.shape == (64,) and np.isfinite(logits.numpy()).all()
    grad_q, grad_h = tape.gradient(logits, [features["query_embedding"], features["history_embedding"]])
    uses_content = MODEL_KINDS[kind]["content"] != "none"
    assert (grad_q is not None and float(tf.reduce_max(tf.abs(grad_q))) > 0) == uses_content
    assert (grad_h is not None and float(tf.reduce_max(tf.abs(grad_h))) > 0) == MODEL_KINDS[kind]["history"]
    assert matmul_flops_per_example(model) > 0


def test_unseen_ids_and_strings_go_to_oov(data, prep):
    model = build_model("dcn", data.spec, prep, NET)
    features, _ = _batch(data, 8)
    features = dict(features)
    features["product_id"] = tf.constant([10**12] * 8, tf.int64)
    features["brand"] = tf.constant(["a brand nobody saw"] * 8)
    assert np.isfinite(model(features).numpy()).all()
    fused, _ = model.encoder(features)
    product_col = data.spec.ids.index("product_id")
    assert set(fused[:, product_col].numpy()) == {model.encoder.offsets[product_col]}  # the OOV row


def test_sparse_step_touches_only_the_batch_rows(data, prep):
    tf.keras.utils.set_random_seed(0)
    model = build_model("dashclip_two_tower", data.spec, prep, NET)
    compile_model(model, TRAIN)
    features, labels = _batch(data, 32, "train")
    before = model.id_embedding.table.numpy().copy()
    model.train_step((features, labels))
    after = model.id_embedding.table.numpy()
    fused, _ = model.encoder(features)
    used = np.unique(fused.numpy())
    changed = np.flatnonzero(np.any(before != after, axis=1))
    assert len(changed) > 0 and set(changed) <= set(used)
    assert model.table_optimizer.iterations.numpy() == 1


def test_id_dropout_trains_the_oov_rows(data, prep):
    import dataclasses

    tf.keras.utils.set_random_seed(0)
    model = build_model("dcn", data.spec, prep, dataclasses.replace(NET, id_dropout=0.5))
    compile_model(model, TRAIN)
    features, labels = _batch(data, 32, "train")
    oov_rows = np.array(model.encoder.offsets)
    before = model.id_embedding.table.numpy()[oov_rows].copy()
    model.train_step((features, labels))
    assert np.any(model.id_embedding.table.numpy()[oov_rows] != before, axis=1).all()
    # inference never drops ids
    np.testing.assert_array_equal(model(features), model(features))


def test_fit_learns_and_resumes_from_checkpoint(data, prep, tmp_path):
    def fresh():
        tf.keras.utils.set_random_seed(1)
        model = build_model("dashclip_two_tower", data.spec, prep, NET)
        compile_model(model, TRAIN)
        return model

    one = fit_model(fresh(), data, TrainConfig(epochs=1, batch_size=256), seed=1, checkpoint_dir=tmp_path / "c")
    assert one.epochs_run == 1 and (tmp_path / "c" / "state" / "state.json").exists()
    resumed_model = fresh()
    resumed = fit_model(resumed_model, data, TRAIN, seed=1, checkpoint_dir=tmp_path / "c")
    assert resumed.resumed_from == 1 and resumed.epochs_run == 1
    straight_model = fresh()
    straight = fit_model(straight_model, data, TRAIN, seed=1, checkpoint_dir=tmp_path / "d")
    assert straight.epochs_run == 2
    # The resumed run saw the same batches and optimizer state as the uninterrupted one.
    np.testing.assert_allclose(resumed.history[-1]["epoch/train_loss"], straight.history[-1]["epoch/train_loss"],
                               rtol=1e-4)
    p = predict(straight_model, data["valid"], data.spec)
    assert p.shape == (len(data["valid"]),) and 0 < p.min() and p.max() < 1
    # A finished run is restored, not retrained.
    again = fit_model(fresh(), data, TRAIN, seed=1, checkpoint_dir=tmp_path / "d")
    assert again.epochs_run == 0 and again.resumed_from == 2


def test_savedmodel_round_trip(data, prep, tmp_path):
    from ranking.saved_model import export_model, load_serving_fn, serving_predict

    tf.keras.utils.set_random_seed(0)
    model = build_model("dashclip_two_tower", data.spec, prep, NET)
    compile_model(model, TRAIN)
    model.fit(make_dataset(data["train"], data.spec, 256, shuffle=True), epochs=1, verbose=0)
    path = export_model(model, tmp_path / "exports", "dashclip_two_tower")
    assert path == tmp_path / "exports" / "dashclip_two_tower" / "1"
    assert (path / "saved_model.pb").exists() and (path / "assets.extra" / "model_info.json").exists()
    fn = load_serving_fn(path)
    inputs = fn.structured_input_signature[1]
    assert inputs["product_id"].dtype == tf.int64 and inputs["device"].dtype == tf.string
    assert inputs["query_embedding"].shape.as_list() == [None, 16]
    assert set(fn.structured_outputs) == {"probability", "logit"}
    test = data["test"]
    np.testing.assert_allclose(serving_predict(fn, test.columns, data.spec), predict(model, test, data.spec),
                               atol=1e-6)
    # versions only grow
    assert export_model(model, tmp_path / "exports", "dashclip_two_tower").name == "2"


def test_platt_calibration_recovers_a_known_miscalibration():
    from ranking.evaluation import fit_calibration

    rng = np.random.default_rng(0)
    z = rng.normal(-3.0, 1.5, 200_000)
    y = (rng.random(z.size) < 1.0 / (1.0 + np.exp(-(0.7 * z + 0.3)))).astype(float)
    a, b = fit_calibration(z, y)
    assert a == pytest.approx(0.7, abs=0.03) and b == pytest.approx(0.3, abs=0.1)
    a, b = fit_calibration(z, y, "bias")
    p = 1.0 / (1.0 + np.exp(-(z + b)))
    assert a == 1.0 and p.sum() == pytest.approx(y.sum(), rel=1e-6)
    assert fit_calibration(-z, y)[0] > 0  # an anti-correlated score is never flipped


def test_restore_final_rebuilds_the_trained_calibrated_model(data, prep, tmp_path):
    from ranking.trainer import restore_final

    tf.keras.utils.set_random_seed(0)
    model = build_model("dcn", data.spec, prep, NET)
    compile_model(model, TRAIN)
    result = fit_model(model, data, TrainConfig(epochs=1, batch_size=256), checkpoint_dir=tmp_path / "c")
    assert result.calibration != (1.0, 0.0)
    rebuilt = build_model("dcn", data.spec, prep, NET)
    state = restore_final(rebuilt, tmp_path / "c")
    assert state["calibration"] == list(result.calibration)
    np.testing.assert_allclose(predict(rebuilt, data["test"], data.spec), predict(model, data["test"], data.spec),
                               rtol=1e-6)
