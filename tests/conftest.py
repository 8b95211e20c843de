"""Shared fixtures: a tiny random Llama chat model with a trained tokenizer (built once per test session)."""

from __future__ import annotations

import pytest

from sftkit.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a tiny model directory (config, weights, tokenizer, generation_config); do not modify it."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
