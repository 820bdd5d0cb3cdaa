"""Serving the trained pCTR model: a versioned SavedModel folder and the three ways to score with it.

    contract.py      what an export folder holds (signatures, model_info.json, warm-up requests); writing, reading
    tf_example.py    model input columns <-> serialized tf.Example protos (the serve_tf_example signature)
    export.py        python -m ranking.serving.export: export an MLflow run, register it, verify an export
    online.py        OnlineRanker: one request's candidates, online features injected by the caller
    batch_score.py   python -m ranking.serving.batch_score: parquet in, scores out, on Apache Beam
"""
