# pcea: the two set-up commands are `make demo` and `make test`; both build the
# virtual environment they need on first use.
#
# TORCH chooses the PyTorch build. The default is the CPU wheel 2.13.0, which a
# plain `pip install torch` would otherwise replace by a multi-GB CUDA build.
# On a GPU machine, for example:
#   make demo TORCH="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.pcea-installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,plot,export]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m ruff check pcea tests scripts
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check pcea tests scripts

bench: $(STAMP)
	$(VENV)/bin/pcea bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
