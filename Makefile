# Two entry points: `make demo` (the main job) and `make test`. Each builds .venv from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

demo: venv
	$(BIN)/daxkit demo

test: venv
	$(BIN)/python -m pytest tests

bench: venv
	$(BIN)/daxkit bench

clean:
	rm -rf $(VENV) build src/*.egg-info src/daxkit/*.so
