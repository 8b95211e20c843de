"""A plain-torch MiniCPM forward pass and a tiny random MiniCPM4 checkpoint, for tests and the cross-check.

`MiniCPMReference` is written from the math of MiniCPM4's remote ``modeling_minicpm.py`` (read, not copied), in
its order of operations: embeddings x scale_emb; per layer RMSNorm -> attention with LongRoPE (cos/sin from
``outer(t, 1/ext_factors) * inv_freq``, times the LongRoPE multiplier, rotation in float32) -> residual + out x
scale_depth/sqrt(L); the same for the MLP; final RMSNorm; lm_head (the embedding matrix when tied) of
hidden / (hidden_size / dim_model_base). Long vs short factors follow the remote code's cache rule on a fresh model:
long when max(max_position_embeddings, seq_len) > original_max_position_embeddings. Module names match the
checkpoint's, so the MiniCPM state dict loads as it is and peft can wrap the linear layers.
It was cross-checked once against the original code under transformers 4.56.2 (bench/minicpm_crosscheck.py).

Imports only torch, safetensors and (for the tokenizer) sentencepiece, so the cross-check can run it in a bare
transformers-4.x venv.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sftkit.testing.tiny_model import CORPUS  # the Chinese + English text the tiny Llama's tokenizer is trained on

# The real ../shared/data/minicpm4-0.5b/config.json (MiniCPM4-0.5B), its LongRoPE factors and muP scalings kept,
# the sizes shrunk (head_dim stays 64 so the 32 factors still fit; hidden 192 makes hidden/dim_model_base = 0.75,
# not a power of two; 8 layers make scale_depth/sqrt(L) = 0.495).
REAL_FACTORS = [
    1.0004360675811768, 1.0668443441390991, 1.1631425619125366, 1.3025742769241333, 1.5040205717086792,
    1.7941505908966064, 2.2101221084594727, 2.802666664123535, 3.6389970779418945, 4.804192543029785,
    6.39855432510376, 8.527148246765137, 11.277542114257812, 14.684998512268066, 18.69317054748535,
    23.13019371032715, 27.72362518310547, 32.1606559753418, 36.168827056884766, 39.57627868652344,
    42.32667541503906, 44.45526885986328, 46.04962921142578, 47.21482849121094, 48.05115509033203,
    48.64370346069336, 49.05967712402344, 49.34980392456055, 49.551246643066406, 49.69068145751953,
    49.78697967529297, 49.85338592529297,
]
SHRUNK_CONFIG: dict[str, Any] = {
    "architectures": ["MiniCPMForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMConfig",
                 "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"},
    "model_type": "minicpm",
    "bos_token_id": 1, "eos_token_id": [2, None],  # None: the <|im_end|> id, set once the tokenizer exists
    "hidden_act": "silu", "hidden_size": 192, "initializer_range": 0.1, "intermediate_size": 384,
    "max_position_embeddings": 32768, "num_attention_heads": 3, "num_hidden_layers": 8, "num_key_value_heads": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"rope_type": "longrope", "long_factor": REAL_FACTORS, "short_factor": REAL_FACTORS,
                     "original_max_position_embeddings": 32768},
    "torch_dtype": "bfloat16", "transformers_version": "4.46.3", "use_cache": True,
    "vocab_size": None,  # set from the tokenizer
    "scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4,
}
ADDED_TOKENS = ["<|im_end|>", "<|im_start|>", "<|tool_call|>", "<|execute_start|>", "<|execute_end|>",
                "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")


# ---- the reference forward --------------------------------------------------------------------------


class _Norm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # MiniCPM: variance in float32, x (not its float32 copy) times rsqrt, back to x's dtype, times the weight.
        variance = x.to(torch.float32).pow(2).mean(dim=-1, keepdim=True)
        return (x * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


class _Attention(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        self.heads, self.kv_heads = heads, cfg.get("num_key_value_heads") or heads
        self.head_dim = hidden // heads
        bias = bool(cfg.get("attention_bias", False))
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        rep = self.heads // self.kv_heads
        k = k[:, :, None].expand(b, self.kv_heads, rep, n, self.head_dim).reshape(b, self.heads, n, self.head_dim)
        v = v[:, :, None].expand(b, self.kv_heads, rep, n, self.head_dim).reshape(b, self.heads, n, self.head_dim)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim) + mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.o_proj(out)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x32 = x.to(torch.float32)
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class _MLP(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        eps = cfg.get("rms_norm_eps", 1e-6)
        self.self_attn = _Attention(cfg)
        self.mlp = _MLP(cfg)
        self.input_layernorm = _Norm(cfg["hidden_size"], eps)
        self.post_attention_layernorm = _Norm(cfg["hidden_size"], eps)


class _Body(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = _Norm(cfg["hidden_size"], cfg.get("rms_norm_eps", 1e-6))


class MiniCPMReference(nn.Module):
    """MiniCPM's causal LM forward in plain torch (eager attention). `forward` returns float32 logits."""

    def __init__(self, cfg: dict[str, Any], exact_angles: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        # exact_angles: RoPE angles in float64 (cos/sin then rounded to float32), i.e. the same math without the
        # float32 rounding of position x frequency that the remote code (and transformers) have near position 1000.
        self.exact_angles = exact_angles
        self.model = _Body(cfg)
        self.tied = cfg.get("tie_word_embeddings", True)
        if not self.tied:
            self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)

    @classmethod
    def from_checkpoint(cls, folder: str | Path, dtype: torch.dtype = torch.float32,
                        exact_angles: bool = False) -> MiniCPMReference:
        from safetensors.torch import load_file

        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        ref = cls(cfg, exact_angles=exact_angles)
        ref.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=True)
        return ref.to(dtype).eval()

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        dim = cfg["hidden_size"] // cfg["num_attention_heads"]
        base = float(cfg.get("rope_theta", 10000.0))
        fdtype = torch.float64 if self.exact_angles else torch.float32
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).to(fdtype) / dim))
        seq_len = int(positions.max()) + 1
        t = torch.arange(seq_len, dtype=fdtype)
        rs = cfg.get("rope_scaling")
        if rs is None:
            freqs, scale = torch.outer(t, inv_freq), 1.0
        elif rs.get("rope_type") == "linear":
            freqs, scale = torch.outer(t / rs["factor"], inv_freq), 1.0
        else:
            max_pos, orig = cfg["max_position_embeddings"], rs["original_max_position_embeddings"]
            cache_len = max(max_pos, seq_len)  # the remote code's cos/sin cache length on a fresh model
            ext = torch.tensor(rs["long_factor"] if cache_len > orig else rs["short_factor"], dtype=fdtype)
            freqs = torch.mul(torch.outer(t, 1.0 / ext), inv_freq)
            scale = math.sqrt(1 + math.log(max_pos / orig) / math.log(orig))
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = (emb.cos() * scale).float(), (emb.sin() * scale).float()
        return cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        b, n = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(n).unsqueeze(0).expand(b, n)
        h = self.model.embed_tokens(input_ids) * cfg.get("scale_emb", 1)
        dtype = h.dtype
        neg = torch.finfo(dtype).min
        mask = torch.triu(torch.full((n, n), neg, dtype=dtype), diagonal=1)[None, None].expand(b, 1, n, n)
        if attention_mask is not None:
            mask = mask.masked_fill(attention_mask[:, None, None, :] == 0, neg)
        cos, sin = self.rope(position_ids)
        c = cfg.get("scale_depth", 1) / math.sqrt(cfg["num_hidden_layers"])
        for layer in self.model.layers:
            h = h + layer.self_attn(layer.input_layernorm(h), cos, sin, mask) * c
            h = h + layer.mlp(layer.post_attention_layernorm(h)) * c
        h = self.model.norm(h)
        head = self.model.embed_tokens.weight if self.tied else self.lm_head.weight
        return nn.functional.linear(h / (cfg["hidden_size"] / cfg.get("dim_model_base", 1)), head).float()

    @torch.no_grad()
    def greedy(self, prompt: list[int], max_new_tokens: int, stop_ids: set[int]) -> list[int]:
        """Greedy decoding by re-running the whole sequence each step (no KV cache to get wrong)."""
        ids = list(prompt)
        for _ in range(max_new_tokens):
            nxt = int(self(torch.tensor([ids]))[0, -1].argmax())
            ids.append(nxt)
            if nxt in stop_ids:
                break
        return ids[len(prompt):]


# ---- a tiny random MiniCPM4 checkpoint ---------------------------------------------------------------


def train_sentencepiece(vocab_size: int = 600) -> bytes:
    """A byte-fallback BPE SentencePiece model trained on CORPUS, with Llama's <unk>=0, <s>=1, </s>=2."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines() * 3), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False, normalization_rule_name="identity", split_digits=True, num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def write_tokenizer(out: Path, sp_model: bytes) -> dict[str, int]:
    """tokenizer.model + MiniCPM4's tokenizer_config.json / special_tokens_map.json / added_tokens.json, shrunk."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    base = sp.get_piece_size()
    added = {tok: base + i for i, tok in enumerate(ADDED_TOKENS)}
    (out / "tokenizer.model").write_bytes(sp_model)

    def entry(content: str) -> dict[str, Any]:
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                "special": True}

    decoder = {"0": entry("<unk>"), "1": entry("<s>"), "2": entry("</s>")}
    decoder.update({str(i): entry(t) for t, i in added.items()})
    tok_cfg = {
        "add_bos_token": True, "add_eos_token": False, "add_prefix_space": None, "added_tokens_decoder": decoder,
        "additional_special_tokens": ADDED_TOKENS, "bos_token": "<s>", "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "legacy": True,
        "model_max_length": 1000000000000000019884624838656, "pad_token": None, "sp_model_kwargs": {},
        "spaces_between_special_tokens": False, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    plain = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    special_map = {"additional_special_tokens": ADDED_TOKENS, "bos_token": {"content": "<s>", **plain},
                   "eos_token": {"content": "<|im_end|>", **plain}, "unk_token": {"content": "<unk>", **plain}}
    for name, obj in (("tokenizer_config.json", tok_cfg), ("special_tokens_map.json", special_map),
                      ("added_tokens.json", added)):
        (out / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"vocab_size": base + len(ADDED_TOKENS), "im_end": added["<|im_end|>"]}


def tiny_minicpm_config(vocab_size: int, im_end: int, **overrides: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(SHRUNK_CONFIG))
    cfg["vocab_size"], cfg["eos_token_id"] = vocab_size, [2, im_end]
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def random_state_dict(cfg: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                      embed_std: float | None = None) -> dict[str, Any]:
    """Random MiniCPM weights (normal, std initializer_range; norm weights around 1), tied like the real model.
    `embed_std`: another std for the embeddings (tiny ones make the RMSNorm eps matter)."""
    gen = torch.Generator().manual_seed(seed)
    ref = MiniCPMReference(cfg)
    std = cfg.get("initializer_range", 0.02)
    sd = {}
    for name, p in ref.state_dict().items():
        if name.endswith("norm.weight"):
            sd[name] = 1 + 0.1 * torch.randn(p.shape, generator=gen)
        elif name == "model.embed_tokens.weight" and embed_std is not None:
            sd[name] = embed_std * torch.randn(p.shape, generator=gen)
        else:
            sd[name] = std * torch.randn(p.shape, generator=gen)
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def build_tiny_minicpm(out_dir: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                       embed_std: float | None = None, **config_overrides: Any) -> str:
    """Write a tiny random MiniCPM4 checkpoint as downloaded (config with auto_map, model.safetensors, tokenizer,
    generation_config) without the remote .py files; return its path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(out, train_sentencepiece())
    cfg = tiny_minicpm_config(tok["vocab_size"], tok["im_end"], **config_overrides)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    gen_cfg = {"bos_token_id": 1, "do_sample": True, "eos_token_id": [2, tok["im_end"]], "pad_token_id": 2,
               "temperature": 0.8, "top_p": 0.8, "transformers_version": "4.46.1"}
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n", encoding="utf-8")
    save_file(random_state_dict(cfg, seed, dtype, embed_std), str(out / "model.safetensors"), metadata={"format": "pt"})
    return str(out)
