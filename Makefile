# Two entry points for a fresh clone (each makes its own virtual environment in .venv):
#   make demo   install, then run the main job on the embedded default data set
#   make test   install, then lint, type-check and run the test suite (installs Chromium and
#               Fashion-MNIST when missing, for the browser test and the real-data tests: Debian's
#               chromium and dataset-fashion-mnist packages, as root with apt-get)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO   ?= runs/demo
CODE    = fedchain clients server experiments tests
# Where Debian's dataset-fashion-mnist puts its files (fedchain.data.sources.DEBIAN_FASHION_MNIST)
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist

.PHONY: install demo test lint chromium fashion-mnist clean

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

# tests/test_report.py opens report.html in headless Chromium. Found on PATH, or installed from
# Debian's packages when we are root with apt-get, or one line saying what to install.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		:; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Chromium for the browser test: apt-get install chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "make test: Chromium is missing (the browser test needs it): install it with 'sudo apt-get install chromium' (Debian/Ubuntu), or run '$(BIN)/pytest -q -m \"not browser\"'" >&2; \
		exit 1; \
	fi

# The fashion-mnist source's default data, read in place by the real-data tests: Debian's package,
# installed the way Chromium is above, or one line saying what to install.
fashion-mnist:
	@if [ -f "$(FASHION_MNIST)/train-images-idx3-ubyte.gz" ]; then \
		:; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Fashion-MNIST for the real-data tests: apt-get install dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "make test: Fashion-MNIST is missing from $(FASHION_MNIST) (the real-data tests read it): install it with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or run '$(BIN)/pytest -q -m \"not fashion_mnist\"'" >&2; \
		exit 1; \
	fi

test: chromium fashion-mnist lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
