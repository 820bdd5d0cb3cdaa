"""FuxiCTR's own DCN, DNN and LR model classes, verbatim from its repository's model_zoo (Apache-2.0, headers kept),
at its commit 0245987 (setup.py version 2.3.10; its fuxictr/pytorch layers and models equal the 2.3.10 wheel's
file for file). The PyPI package ships the library (layers, BaseModel, FeatureMap) but not model_zoo/, whose classes
are the models FuxiCTR's own benchmarks run; they import only the installed package. Used by benchmarks/peers/fuxictr_run.py inside .bench-venvs/fuxictr, never by the project."""

from .DCN import DCN
from .DNN import DNN
from .LR import LR

__all__ = ["DCN", "DNN", "LR"]
