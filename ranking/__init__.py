"""pCTR ranking: the DashCLIP two-tower model, the DCN production baseline, other baselines, MLflow comparisons.

    python -m ranking.train --config experiments/configs/ranking/<name>.yaml [--seeds 3] [key=value ...]

Read in this order: data.py (training set -> checked columns -> tf.data), models.py (the models, top to bottom),
trainer.py (fit, early stopping, checkpoints, calibration), baselines.py, evaluation.py (keys, slices, plots),
train.py (the experiment and MLflow), saved_model.py (the serving export). config.py holds the model and
training configs; metrics.py the numpy metrics; sparse_optim.py the row-sparse table optimizers.
Importing this package imports nothing heavy: TensorFlow comes in through ranking/_tf.py where it is needed.
"""
