# Every target installs what it needs itself (the .venv stamp below). `make help` lists them.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP := $(VENV)/.stamp

# generation (make data)
MODEL ?= deepseek-chat
MODE ?= chat
BASE_URL ?=
TOPICS ?= data/topics/hit_campus.txt
N_PER_TOPIC ?= 6
CONCURRENCY ?= 50
GEN_FLAGS ?=
RAW := data/raw/hit/generated.jsonl

.PHONY: help venv test lint data gen distill judge bench bench-gen clean

help: ## list every target with one line each
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt requirements-deepspeed.txt pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PYTHON) -m pip install -q --no-build-isolation -r requirements-deepspeed.txt
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	$(PYTHON) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

venv: $(STAMP) ## create .venv with the pinned CPU requirements (torch 2.13.0 CPU)

test: $(STAMP) ## run ruff and the whole pytest suite (CPU, loopback only)
	$(BIN)/ruff check .
	$(PYTHON) -m pytest

lint: $(STAMP) ## ruff only
	$(BIN)/ruff check .

gen: $(STAMP) ## generate SFT records from TOPICS into data/raw/ (needs an API key: OPENAI_API_KEY or .env)
	$(PYTHON) gen_SFT_data.py --model $(MODEL) --mode $(MODE) $(if $(BASE_URL),--base-url $(BASE_URL)) \
	  --topics-file $(TOPICS) --n-per-topic $(N_PER_TOPIC) --max-concurrency $(CONCURRENCY) --out $(RAW) $(GEN_FLAGS)

data: gen ## the main job: generate -> (later stages append here)

# distillation (seed 000): knowledge slices -> generate -> judge -> dedup -> train/val
INPUT ?=
DISTILL_CONFIG ?=
DISTILL_OUT ?= data/distilled
FORMAT ?= sharegpt
JUDGE_INPUT ?= $(RAW)

distill: $(STAMP) ## slices -> generation -> multi-LLM judging -> train/val: make distill INPUT=slices.jsonl [DISTILL_CONFIG=cfg.json]
	@test -n "$(INPUT)" || { echo "usage: make distill INPUT=slices.jsonl [DISTILL_CONFIG=configs/judge.example.json] [DISTILL_OUT=data/distilled]"; exit 2; }
	$(PYTHON) scripts/run_pipeline.py --input $(INPUT) --output $(DISTILL_OUT) --format $(FORMAT) $(if $(DISTILL_CONFIG),--config $(DISTILL_CONFIG))

judge: $(STAMP) ## judge existing records (default: the generated set) into DISTILL_OUT
	$(PYTHON) judge.py --input $(JUDGE_INPUT) --output-dir $(DISTILL_OUT) --format $(FORMAT) $(if $(DISTILL_CONFIG),--config $(DISTILL_CONFIG))

bench-gen: $(STAMP) ## client throughput vs the openai SDK against a local server
	$(PYTHON) bench/bench_gen.py

bench: bench-gen ## every benchmark

clean: ## remove generated data and caches (keeps .venv)
	rm -rf data/raw data/processed .pytest_cache .ruff_cache
