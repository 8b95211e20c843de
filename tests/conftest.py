"""Shared fixtures: a tiny random Llama chat model with a trained tokenizer (built once per test session), and one
tokenizer of each family the templates are tested with."""

from __future__ import annotations

import pytest

from sftkit.tiny_model import TOKENIZER_FAMILIES, build_sentencepiece_tokenizer, build_tiny_model


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
