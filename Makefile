# imgcluster developer commands. `make install` then `make test` is all a new machine needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install install-gpu install-ray test test-fast lint bench bench-objectives bench-speed bench-k bench-report bench-duplicates bench-outliers bench-names bench-peers bench-peers-10000 bench-runtime bench-startup bench-memory bench-ray clean

install: $(BIN)/imgcluster

$(BIN)/imgcluster: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision first, pinned, so no other package pulls a different build
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# faiss-gpu in place of faiss-cpu: the two wheels write the same `faiss` folder, so only one may stay.
install-gpu: install
	$(BIN)/pip install -q -e '.[gpu]'
	$(BIN)/pip uninstall -y -q faiss-cpu
	$(BIN)/pip install -q --force-reinstall --no-deps 'faiss-gpu-cu12>=1.8'

# The Ray engine's extra (ray[data], pyarrow); without it the tests under tests/scale/ skip, saying why.
install-ray: $(BIN)/.ray-installed

$(BIN)/.ray-installed: $(BIN)/imgcluster
	$(BIN)/pip install -q -e '.[ray]' 'moto[server]>=5'  # moto: the local S3 server of the s3:// tests
	touch $@

test: install
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/pytest -q -m "not slow and not browser" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check imgcluster tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/bench_pipeline.py

bench-objectives: install
	$(BIN)/python benchmarks/bench_objectives.py

bench-speed: install
	$(BIN)/python benchmarks/bench_speed.py

bench-k: install
	$(BIN)/python benchmarks/bench_choose_k.py

bench-report: install
	$(BIN)/python benchmarks/bench_report.py

bench-duplicates: install
	$(BIN)/python benchmarks/bench_near_duplicates.py

bench-outliers: install
	$(BIN)/python benchmarks/bench_outliers.py

bench-names: install
	$(BIN)/python benchmarks/bench_names.py

# fastdup side by side; it installs fastdup into its own virtualenv under benchmarks/data/ on first use
bench-peers: install
	$(BIN)/python benchmarks/bench_peers.py

# issue 15's target run alone: all 10,000 Fashion-MNIST test images, imgcluster (no --runtime: int8 on the CPU since
# round 23; add imgcluster-torch to --tools for torch) then fastdup, with
# imgcluster's phase-by-phase breakdown (about 7 minutes on a quiet 2-core machine)
bench-peers-10000: install
	$(BIN)/python benchmarks/bench_peers.py --sizes 10000 --no-sample-data --tools imgcluster,fastdup --section peers-10000-target

bench-runtime: install
	$(BIN)/python benchmarks/bench_runtime.py

bench-startup: install
	$(BIN)/python benchmarks/bench_startup.py

# a cold assign of sample_data: memory timeline and peaks, against BENCH_BASELINE=<checkout> when set
bench-memory: install
	$(BIN)/python benchmarks/bench_startup.py --memory

# the Ray engine against the single-process path; writes benchmarks/results_ray.md
bench-ray: install-ray
	$(BIN)/python benchmarks/bench_ray.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
