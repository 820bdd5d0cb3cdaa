"""What every stage shares and no stage owns: typed config loading (`core.config`), the MLflow store
(`core.tracking`), the numpy metrics (`core.metrics`) and atomic file and folder writes (`core.files`).

It imports no other package of the project, and neither torch nor TensorFlow: the simulator, DashCLIP, the feature
store and ranking all import it (docs/design.md, "Import rules").
"""
