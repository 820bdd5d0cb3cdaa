"""pCTR ranking: the DashCLIP two-tower model, the DCN production baseline, other baselines, MLflow comparisons,
and the serving of the trained model (ranking/serving/).

    python -m ranking.train --config experiments/configs/ranking/<name>.yaml [--seeds 3] [key=value ...]

Read in this order:
    config.py          the stage's whole config tree (RankingConfig and its sections)
    training_set.py    training-set folder -> checked numpy columns (pyarrow)
    pipeline.py        numpy columns -> tf.data batches
    preprocessing.py   vocabularies and dense statistics fitted on train (numpy)
    models.py          the neural models, top to bottom
    sparse_optim.py    the row-sparse optimizers of the id-embedding table
    fit.py             fitting one neural model: early stopping, checkpoints, calibration
    baselines.py       base rate, historical CTR, logistic regression, GBDT
    calibration.py     Platt calibration, sigmoid and logit
    slices.py          evaluation slices
    report.py          metric keys, the oracle, comparison and gains tables, figures
    train.py           the experiment and MLflow (the entry point)
    serving/           the SavedModel contract, export, tf.Example encoding, online and batch scoring
Importing this package imports nothing heavy: TensorFlow comes in through ranking/tf_legacy_keras.py where it is
needed; config, training_set, preprocessing, baselines, calibration, slices and report never import it.
"""
