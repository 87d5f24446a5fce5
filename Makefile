# Two entry points (see README.md):
#   make demo  - generate a project with the default answers and run its offline smoke pipeline
#   make test  - the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test clean

$(BIN)/.installed: pyproject.toml cookiecutter.json tests/constraints.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=25.1"
	$(BIN)/python tests/constraints.py > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt --group test
	touch $@

venv: $(BIN)/.installed

demo: venv
	rm -rf build/demo
	$(BIN)/cookiecutter --no-input --output-dir build/demo .
	cd build/demo/contoso-support-assistant && ../../../$(BIN)/python setup/smoke.py

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build
