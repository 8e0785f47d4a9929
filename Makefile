# pcea: the two set-up commands are `make demo` and `make test`; both build the
# virtual environment they need on first use.
#
# TORCH names the PyTorch release, TORCH_INDEX the wheel index it is taken from
# first. The default is PyTorch's CPU index: from the public PyPI, `pip install
# torch==2.13.0` on Linux x86-64 is a CUDA build plus ~15 nvidia-* packages (GBs).
# Only torch comes from TORCH_INDEX (--no-deps; its dependencies and pcea's come
# from pip's configured index). Where TORCH_INDEX cannot be reached (a machine
# with only a package mirror or local wheels), the attempt fails within seconds
# (--timeout, --retries 0), a note says so, and torch comes from pip's configured
# index like everything else. On a GPU machine, in a fresh venv (make clean first):
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cu128
# TORCH_INDEX= (empty) takes torch from pip's configured index only.
PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip --disable-pip-version-check
STAMP       := $(VENV)/.pcea-installed

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(PIP) install --quiet --no-deps --timeout 10 --retries 0 \
	    --index-url "$(TORCH_INDEX)" "$(TORCH)" \
	  || echo "pcea: no $(TORCH) from $(TORCH_INDEX); taking it from pip's configured index" \
	          "(from the public PyPI on Linux x86-64 that is a CUDA build)")
	$(PIP) install --quiet "$(TORCH)" -e ".[dev,plot,export]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m ruff check pcea tests scripts
	$(PY) -m pytest -q

# The suite without the tests marked slow (processes, ../shared/data, hypothesis): for use while
# editing; `make test` stays the whole suite.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check pcea tests scripts

bench: $(STAMP)
	$(VENV)/bin/pcea bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
