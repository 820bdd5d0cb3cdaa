# The two commands of the README:  make demo  (the whole pipeline on the embedded default world)
#                                   make test  (the test suite; make test-slow: the tests marked slow)
# Both create .venv and install the pinned stack on first use; later runs skip the install.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WORLD  ?= demo

export TF_USE_LEGACY_KERAS := 1
export MLFLOW_TRACKING_URI ?= sqlite:///mlruns/mlflow.db
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE := 1

.PHONY: demo test test-slow bench bench-esci install constraints clean-data redis

DATA   := data/$(WORLD)
CKPT   := $(DATA)/embeddings/checkpoints
EMBCFG := experiments/configs/embeddings/$(WORLD).yaml
FSCFG  := experiments/configs/features/$(WORLD).yaml
EMB    := dashclip-$(WORLD)

demo: $(STAMP) redis
	$(PY) -m experiments.simulate --config experiments/configs/world/$(WORLD).yaml --out $(DATA) --overwrite
	$(PY) -m embeddings.train --stage 1 --config $(EMBCFG) --data $(DATA)
	$(PY) -m embeddings.train --stage 2 --config $(EMBCFG) --data $(DATA)
	$(PY) -m embeddings.evaluate --config $(EMBCFG) --data $(DATA) --encoder stage1=$(CKPT)/stage1 --encoder stage2=$(CKPT)/stage2
	$(PY) -m embeddings.precompute --data $(DATA) --checkpoint $(CKPT)/stage2 --version $(EMB)
	$(PY) -m feature_store build --data $(DATA) --embeddings $(EMB) --config $(FSCFG)
	$(PY) -m feature_store materialize --data $(DATA) --embeddings $(EMB) --config $(FSCFG)
	$(PY) -m feature_store training-set --data $(DATA) --embeddings $(EMB) --config $(FSCFG)
	$(PY) -m ranking.train --config experiments/configs/ranking/$(WORLD).yaml
	$(PY) -m ranking.serving.export --verify exports/dashclip_two_tower
	$(PY) -m ranking.serving.batch_score --model exports/dashclip_two_tower --input $(DATA)/training_sets/$(EMB)/test \
	    --output $(DATA)/scores/test.parquet
	# The A/B test of the two rankers on the test days: export the dcn model of the latest ranking run, simulate,
	# execute the notebook (HTML next to the log: $(DATA)/experiments/$(WORLD)/report.html), track in MLflow `ab-tests`.
	$(PY) -m ranking.serving.export --no-progress --out exports --run $$($(PY) -c "import mlflow; \
	    r = mlflow.search_runs(experiment_names=['pctr-ranking'], filter_string=\"tags.model = 'dcn'\", \
	    order_by=['start_time DESC'], max_results=1); print(r.run_id[0])")
	$(PY) -m experiments.ab_simulate --control exports/dcn --treatment exports/dashclip_two_tower --data $(DATA) \
	    --config experiments/configs/ab/$(WORLD).yaml

test: $(STAMP) redis
	$(PY) -m pytest -q tests

# The tests marked slow (over 30 s each: subprocess kill-and-resume of training); make test deselects them (pytest.ini)
test-slow: $(STAMP) redis
	$(PY) -m pytest -q -m slow tests

# Ours vs DeepCTR 0.9.4 and FuxiCTR 2.3.10 -> benchmarks/results/ctr_bench.md: the DCN's training examples/s on the
# Criteo sample replicated to 500k rows (alternating runs) and our step against the matmul roof, then test AUC and
# log loss on 5 folds x 3 seeds of the Criteo and Avazu samples with paired differences. Each accuracy run is cached
# in benchmarks/results/ctr_runs, so an interrupted bench resumes and a rerun only summarises. The peers live in
# their own virtualenvs under .bench-venvs/, never project dependencies; PEERS= runs ours alone.
PEERS ?= deepctr fuxictr
bench: $(STAMP)
	$(if $(strip $(PEERS)),benchmarks/peers/setup_venvs.sh $(PEERS))
	$(if $(strip $(PEERS)),$(PY) -m pytest -q -m peers tests/benchmarks/test_ctr_bench.py)
	$(PY) -m benchmarks.ctr_bench --throughput --peers $(PEERS)
	$(PY) -m benchmarks.ctr_bench --folds 5 --seeds 3 --peers $(PEERS)

# DashCLIP stage 2 vs all-MiniLM-L6-v2 as shipped and vs sentence-transformers' own fine-tune of it (the st peer, in
# .bench-venvs/st) on 150 real ESCI queries, 5 folds x 3 seeds -> benchmarks/results/esci.md; runs are cached in
# benchmarks/results/esci_runs, so an interrupted run resumes. ESCI_PEERS= runs stage 2 alone; ESCI_ARGS adds flags
# (e.g. ESCI_ARGS="--train-queries 30,60,0" for the learning curve).
ESCI_PEERS ?= st
bench-esci: $(STAMP)
	$(if $(strip $(ESCI_PEERS)),benchmarks/peers/setup_venvs.sh $(ESCI_PEERS))
	$(PY) -m benchmarks.esci_bench $(if $(strip $(ESCI_PEERS)),--peers $(ESCI_PEERS)) $(ESCI_ARGS)

install: $(STAMP)

# A redis-server for the Redis online store (feature-store config online_store: redis) and its tests: the OS package,
# installed where this runs as root with apt-get; elsewhere one line says the Redis tests will skip.
redis:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } || \
	    echo "redis-server is not installed and cannot be here (needs root and apt-get): the Redis online-store tests will skip"

# The install is redone only when setup.py or constraints.txt change.
$(STAMP): setup.py constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all]"
	touch $(STAMP)

# Re-resolve the pinned set after changing the extras in setup.py.
constraints: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//' > constraints.new
	{ head -2 constraints.txt; cat constraints.new; } > constraints.txt && rm constraints.new

clean-data:
	rm -rf data exports
