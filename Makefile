# Two commands (README quick start):
#   make run    create .venv if missing, then run the default suite within 15 min (SUITE=... for another)
#   make test   create .venv with the test extras if missing, then run the tests
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
SUITE  ?= quick
# make run fits the default suite into 15 minutes on this machine: it measures its speed and, where the
# declared epochs would not fit (fp32 without AVX-512 BF16), scales them down to the suite's floors
# (bench/budget.py; it prints what it measured and chose). BUDGET= runs the suite exactly as declared.
BUDGET ?= $(if $(filter quick,$(SUITE)),15,)
# Data: $BENCH_DATA_DIR if set, else ../shared/data/medmnist when it exists, else medmnist's ~/.medmnist.
SHARED_DATA := $(abspath ../shared/data/medmnist)
ifeq ($(BENCH_DATA_DIR),)
ifneq ($(wildcard $(SHARED_DATA)/*.npz),)
export BENCH_DATA_DIR := $(SHARED_DATA)
endif
endif
export MLFLOW_DISABLE_TELEMETRY := true
# medmnistc pins medmnist==3.0.1 / scikit-image==0.23.2, which our pins exclude: install it alone
MEDMNISTC := medmnistc==0.1.0

.PHONY: run test test-all ui bundle clean-venv

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[test,ray,postgres,shift,tune]'
	$(BIN)/python -m pip install -q --no-deps $(MEDMNISTC)
	touch $@

run: $(BIN)/.installed
	$(BIN)/bench suite $(SUITE) $(if $(BUDGET),--budget-minutes $(BUDGET))

test: $(BIN)/.installed-test
	@scripts/system-packages.sh
	$(BIN)/python -m pytest

test-all: $(BIN)/.installed-test
	@scripts/system-packages.sh
	$(BIN)/python -m pytest -m ''

ui: $(BIN)/.installed
	$(BIN)/bench ui

# an air-gapped host's install: wheels for this Python/platform, the data with MD5s, an offline installer
bundle: $(BIN)/.installed
	scripts/bundle.sh $(BUNDLE)

clean-venv:
	rm -rf $(VENV)
