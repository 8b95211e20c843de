#!/usr/bin/env bash
# The GPU suite (bench/gpu_suite.py) on a bare H100/H200 in one call of at most 9 minutes.
#
#   bash bench/gpu_suite.sh --prepare   # here, once: the wheels the GPU image lacks into .whl/ (bitsandbytes,
#                                       # orjson, and this project's transformers/tokenizers/peft pins) and the
#                                       # MiniCPM4-0.5B config + the real generated set into .gpu_suite/
#   bash bench/gpu_suite.sh             # there: installs .whl/ into /tmp/site, runs the suite within 540 s;
#                                       # with the device tool: carry [".whl", ".gpu_suite"], timeout_s 570
#
# Both folders are git-ignored and travel only when carried (about 61 MB together, under the 64 MiB limit).
# vLLM and SGLang cannot travel that way (their CUDA wheels are hundreds of MB): where neither is installed the
# suite's `engines` section says so and the other sections still run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p .whl .gpu_suite
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    bitsandbytes==0.50.2 orjson==3.13.0 transformers==5.23.0 tokenizers==0.23.3 peft==0.21.2
  cp ../shared/data/minicpm4-0.5b/config.json .gpu_suite/minicpm4-0.5b.config.json
  cp ../shared/data/hit/generated_data.jsonl .gpu_suite/generated_data.jsonl
  du -sh .whl .gpu_suite
  exit 0
fi

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1
out="${OUT:-bench/results}"
mkdir -p "$out"
nvidia-smi -L || true
timeout 540 python3 bench/gpu_suite.py --budget-s 480 --out "$out/gpu_suite.json" "$@"
