# ddnb developer commands. Each target does its own set-up, as on a new machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ddnb-installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data test demo lab bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

# Fashion-MNIST from Debian, when apt is here and the data is not; quietly skipped elsewhere.
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing dataset-fashion-mnist with apt-get"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
			|| echo "apt-get could not install dataset-fashion-mnist; tests that need it are skipped"; \
	fi

# One OpenMP thread: the tests' tensors are small, and two threads on a busy 2-core machine spin at every
# barrier (measured: a small ConvNet double backward 10x slower with 2 threads beside another job).
test: setup data
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

# The quickstart notebook, headless, on the embedded digits data (a minute or two on a laptop CPU).
demo: setup data
	$(BIN)/ddnb run notebooks/00_quickstart.ipynb -p dataset digits -p budget smoke -p eval_epochs 100 --out outputs/demo --overwrite

lab: setup data
	$(BIN)/jupyter lab notebooks/

bench: setup data
	$(BIN)/python benchmarks/bench_speed.py
	$(BIN)/python benchmarks/bench_distill.py
	$(BIN)/python benchmarks/bench_random_fmnist.py
	$(BIN)/python benchmarks/bench_eval.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
