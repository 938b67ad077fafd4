# Two entry points for a fresh clone (each makes its own virtual environment in .venv):
#   make demo   install, then run the main job on the embedded default data set
#   make test   install, then lint, type-check and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO   ?= runs/demo
CODE    = fedchain clients server experiments tests

.PHONY: install demo test lint clean

$(BIN)/fedchain: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import torch, torchvision, flwr; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'flwr', flwr.__version__)"
	@touch $@

install: $(BIN)/fedchain

demo: install
	rm -rf $(DEMO)
	$(BIN)/fedchain simulate --out $(dir $(DEMO)) --run-id $(notdir $(DEMO))
	$(BIN)/fedchain verify $(DEMO)

lint: install
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
