# Two commands (README quick start):
#   make run    create .venv if missing, then run the `quick` suite (SUITE=... for another)
#   make test   create .venv if missing, then run the tests
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
SUITE  ?= quick
# Data: $BENCH_DATA_DIR if set, else ../shared/data/medmnist when it exists, else medmnist's ~/.medmnist.
SHARED_DATA := $(abspath ../shared/data/medmnist)
ifeq ($(BENCH_DATA_DIR),)
ifneq ($(wildcard $(SHARED_DATA)/*.npz),)
export BENCH_DATA_DIR := $(SHARED_DATA)
endif
endif
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: run test test-all ui clean-venv

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/bench suite $(SUITE)

test: $(BIN)/.installed
	$(BIN)/python -m pytest

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -m ''

ui: $(BIN)/.installed
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db) --host 127.0.0.1 --port 5000

clean-venv:
	rm -rf $(VENV)
