"""MiniCPM checkpoints (``MiniCPMForCausalLM``, hub remote code) as exactly equivalent plain Llama checkpoints.

MiniCPM4-0.5B ships its architecture as remote code written for transformers 4.x, which does not load under
transformers 5. Its forward pass is Llama's with three muP scalings and LongRoPE:

    h_0     = scale_emb * E[x]
    h_{l+1} = h_l + c * f_l(h_l)          c = scale_depth / sqrt(num_hidden_layers), f_l = attention or MLP,
                                           each starting with an RMSNorm of its input
    logits  = L @ (norm(h_L) / (hidden_size / dim_model_base))

Every consumer of the residual stream h is an RMSNorm, and RMSNorm(x; eps) = RMSNorm(x / c; eps / c**2) exactly.
So the converted model carries the stream h' = h / c instead: the embeddings are multiplied by scale_emb / c, every
RMSNorm's eps becomes eps / c**2, the branches are added unscaled (h'_{l+1} = h'_l + f_l(h_l)), and the logit
scaling goes into lm_head. Only the embedding and lm_head matrices change (tied embeddings are untied); every
attention/MLP weight and norm weight is copied bit for bit. That choice (rather than folding c into o_proj and
down_proj) keeps LoRA exact: a LoRA delta on any linear layer has the same effect, the same gradients and the same
optimizer trajectory as on the original code, and an adapter trained here also applies to the original MiniCPM
(e.g. vLLM's native MiniCPM). QLoRA quantizes the very same linear weights.

RoPE: MiniCPM's LongRoPE multiplies cos/sin by sqrt(1 + ln(max_pos / orig) / ln(orig)) (also when that is below 1,
where transformers would use 1), so the factor is written explicitly as ``attention_factor``. MiniCPM picks its
long or short factors from the length of its cos/sin cache, which starts at max_position_embeddings: long for every
length when max_position_embeddings > original_max_position_embeddings (the converted config then carries the
long factors as the short ones), else short up to original_max_position_embeddings and long beyond, which is what
transformers' ``longrope`` does (decided per forward pass from the longest position). One difference is left:
MiniCPM keeps its long-factor cache after one long sequence, so later short sequences in the same process use the
long factors too; the converted model decides per call. For MiniCPM4-0.5B (short == long factors,
max == original == 32,768, attention factor 1) none of this changes a number.

``resolve_model(name)`` is the hook train/, merge and inference call before ``from_pretrained``: any other model is
returned unchanged; a MiniCPM checkpoint (local folder or hub id; the hub's .py files are never downloaded) is
converted once into a cache folder keyed by the source files and reused afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MINICPM_ARCHITECTURES = ("MiniCPMForCausalLM",)
CONVERTER_VERSION = 1  # part of the cache key: bump when the conversion changes
CONVERSION_FILE = "sftkit_minicpm_conversion.json"  # written into every converted folder
CACHE_ENV = "SFTKIT_CACHE"
# Defaults of the remote MiniCPMConfig for keys a config.json may leave out.
MINICPM_DEFAULTS: dict[str, Any] = {
    "scale_emb": 1, "dim_model_base": 1, "scale_depth": 1, "tie_word_embeddings": True, "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
    "max_position_embeddings": 2048, "initializer_range": 0.02, "pretraining_tp": 1, "rope_scaling": None,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None,
}
# Files of a checkpoint that travel into the converted folder unchanged (tokenizer, chat template, generation).
COPIED_FILES = re.compile(r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|generation_config\.json|"
                          r"chat_template.*\.(jinja|json)|sftkit_template\.json|vocab.*|merges\.txt)$")
# What is fetched for a hub id: never the remote *.py code.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.jinja", "*.txt", "*.tiktoken"]
LAYER_KEYS = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
              "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
              "input_layernorm.weight", "post_attention_layernorm.weight")
BIAS_KEYS = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.o_proj.bias")


class ConversionError(ValueError):
    """A MiniCPM checkpoint that cannot be converted exactly (the message says why)."""


# ---- reading configs --------------------------------------------------------------------------------


def is_minicpm(config: dict[str, Any]) -> bool:
    archs = config.get("architectures") or []
    return any(a in MINICPM_ARCHITECTURES for a in archs) or (not archs and config.get("model_type") == "minicpm")


def _is_hub_id(name: str) -> bool:
    return (name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()
            and all(part.strip() for part in name.split("/")))


def read_config(name_or_path: str) -> dict[str, Any] | None:
    """config.json of a local folder or hub id as a dict; None when there is none to read (left to transformers)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        file = path / "config.json"
    elif _is_hub_id(name_or_path):
        from huggingface_hub import hf_hub_download

        try:
            file = Path(hf_hub_download(name_or_path, "config.json"))
        except Exception:  # offline, missing, gated: transformers will say so in its own words
            return None
    else:
        return None
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def tokenizer_remote_code(name_or_path: str, trust_remote_code: bool) -> bool:
    """trust_remote_code for loading a checkpoint's tokenizer: never for MiniCPM, whose tokenizer is a stock
    LlamaTokenizer (with the flag, transformers would import the repo's configuration_minicpm.py just to read
    the config)."""
    if not trust_remote_code:
        return False
    config = read_config(name_or_path)
    return not (config is not None and is_minicpm(config))


def _get(cfg: dict[str, Any], key: str) -> Any:
    value = cfg.get(key)
    return MINICPM_DEFAULTS.get(key) if value is None else value


# ---- the math ---------------------------------------------------------------------------------------


def residual_scale(cfg: dict[str, Any]) -> float:
    """c = scale_depth / sqrt(num_hidden_layers): what MiniCPM multiplies each attention/MLP output by."""
    return float(_get(cfg, "scale_depth")) / math.sqrt(int(cfg["num_hidden_layers"]))


def minicpm_rope_attention_factor(max_pos: int, original: int) -> float:
    """MiniCPM's LongRoPE cos/sin multiplier (the remote code applies it for any ratio, also below 1)."""
    return math.sqrt(1 + math.log(max_pos / original) / math.log(original))


def llama_rope_scaling(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The converted config's rope_scaling, reproducing MiniCPM's rotary embedding (see the module docstring)."""
    rs = cfg.get("rope_scaling")
    if rs is None:
        return None
    if not isinstance(rs, dict):
        raise ConversionError(f"rope_scaling must be an object, got {rs!r}")
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        if not isinstance(rs.get("factor"), int | float) or rs["factor"] <= 0:
            raise ConversionError(f"linear rope_scaling needs a positive factor, got {rs.get('factor')!r}")
        return {"rope_type": "linear", "factor": float(rs["factor"])}
    if kind != "longrope":
        raise ConversionError(f"rope_scaling type {kind!r} is not converted (only longrope, linear or none)")
    original = rs.get("original_max_position_embeddings")
    if not isinstance(original, int) or original < 2:
        raise ConversionError(f"longrope needs original_max_position_embeddings >= 2, got {original!r}")
    head_dim = int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])
    short, long = list(rs.get("short_factor") or []), list(rs.get("long_factor") or [])
    if len(short) != head_dim // 2 or len(long) != head_dim // 2:
        raise ConversionError(f"longrope short_factor/long_factor need {head_dim // 2} values each "
                              f"(head_dim {head_dim}), got {len(short)} and {len(long)}")
    max_pos = int(_get(cfg, "max_position_embeddings"))
    out: dict[str, Any] = {
        "rope_type": "longrope",
        # MiniCPM's cache starts max_pos long: beyond the original length it uses the long factors for every length.
        "short_factor": long if max_pos > original else short, "long_factor": long,
        "original_max_position_embeddings": original,
        "attention_factor": minicpm_rope_attention_factor(max_pos, original),
    }
    if max_pos >= original:
        out["factor"] = max_pos / original  # what transformers would derive itself; stated to spare its warning
    else:
        # vLLM/SGLang use 1 below a ratio of 1 unless told: give them MiniCPM's multiplier.
        out["short_mscale"] = out["long_mscale"] = out["attention_factor"]
    return out


def llama_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The Llama config.json that, with `convert_state_dict`'s weights, computes MiniCPM's logits."""
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            raise ConversionError(f"config.json: {key} must be a positive integer, got {cfg.get(key)!r}")
    if cfg.get("quantization_config"):
        raise ConversionError("a quantized MiniCPM checkpoint cannot be converted exactly; use the bf16 original")
    if cfg.get("sparse_config"):
        raise ConversionError("MiniCPM with sparse attention (sparse_config, InfLLM v2) is not a Llama: not converted")
    if int(_get(cfg, "pretraining_tp")) != 1:
        raise ConversionError("pretraining_tp > 1 changes MiniCPM's logits (no dim_model_base scaling): not converted")
    heads, hidden = int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
    if hidden % heads:
        raise ConversionError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    c = residual_scale(cfg)
    if not c > 0:
        raise ConversionError(f"scale_depth must be positive, got {_get(cfg, 'scale_depth')!r}")
    out = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg["vocab_size"], "hidden_size": hidden, "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"], "num_attention_heads": heads,
        "num_key_value_heads": cfg.get("num_key_value_heads") or heads, "head_dim": hidden // heads,
        "hidden_act": _get(cfg, "hidden_act"), "max_position_embeddings": _get(cfg, "max_position_embeddings"),
        "initializer_range": _get(cfg, "initializer_range"),
        # The stream is h / c: RMSNorm(h; eps) == RMSNorm(h / c; eps / c^2).
        "rms_norm_eps": float(_get(cfg, "rms_norm_eps")) / c**2,
        "bos_token_id": _get(cfg, "bos_token_id"), "eos_token_id": _get(cfg, "eos_token_id"),
        "pad_token_id": _get(cfg, "pad_token_id"),
        "tie_word_embeddings": False, "attention_bias": bool(_get(cfg, "attention_bias")),
        "attention_dropout": _get(cfg, "attention_dropout"), "mlp_bias": False, "pretraining_tp": 1,
        "rope_theta": float(_get(cfg, "rope_theta")), "rope_scaling": llama_rope_scaling(cfg),
        "use_cache": True, "torch_dtype": cfg.get("torch_dtype") or cfg.get("dtype") or "float32",
    }
    return out


def scalings(cfg: dict[str, Any]) -> dict[str, float]:
    c = residual_scale(cfg)
    return {"residual_scale": c, "embedding_scale": float(_get(cfg, "scale_emb")) / c,
            "lm_head_scale": float(_get(cfg, "dim_model_base")) / int(cfg["hidden_size"])}


def convert_state_dict(sd: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """MiniCPM weights -> Llama weights: embeddings x scale_emb/c, lm_head x dim_model_base/hidden_size (from the
    embeddings when tied), everything else as it is. Scaled tensors are kept in float32 (exact for a bf16 source)."""
    import torch

    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}  # old non-persistent buffers
    tied = bool(_get(cfg, "tie_word_embeddings"))
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(int(cfg["num_hidden_layers"])):
        expected |= {f"model.layers.{i}.{k}" for k in LAYER_KEYS}
        if _get(cfg, "attention_bias"):
            expected |= {f"model.layers.{i}.{k}" for k in BIAS_KEYS}
    if not tied:
        expected.add("lm_head.weight")
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected - {"lm_head.weight"})
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weight(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} weight(s) a Llama has no place for, e.g. {', '.join(unexpected[:3])}")
        raise ConversionError("; ".join(parts))
    s = scalings(cfg)

    def scaled(t: Any, factor: float) -> Any:
        return (t.to(torch.float64) * factor).to(torch.float32)  # one rounding, from the exact product

    out = dict(sd)
    embed = sd["model.embed_tokens.weight"]
    out["model.embed_tokens.weight"] = scaled(embed, s["embedding_scale"])
    out["lm_head.weight"] = scaled(embed if tied else sd["lm_head.weight"], s["lm_head_scale"])
    return {k: v.contiguous() for k, v in out.items()}


# ---- files ------------------------------------------------------------------------------------------


def weight_files(src: Path) -> list[Path]:
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (src / index).is_file():
            weight_map = json.loads((src / index).read_text(encoding="utf-8")).get("weight_map", {})
            return [src / f for f in sorted(set(weight_map.values()))]
        if (src / single).is_file():
            return [src / single]
    raise ConversionError(f"{src}: no weights (model.safetensors[.index.json] or pytorch_model.bin[.index.json])")


def load_state_dict(src: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    sd: dict[str, Any] = {}
    for f in weight_files(src):
        if not f.is_file():
            raise ConversionError(f"{f}: listed in the weight index but missing")
        part = load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu",
                                                                               weights_only=True)
        sd.update(part)
    return sd


def fingerprint(src: Path) -> str:
    """Cache key of a source checkpoint: its config and tokenizer files' bytes, its weight files' real path, size and
    mtime (a hub snapshot links to content-named blobs), and the converter version."""
    h = hashlib.sha256(f"sftkit-minicpm-v{CONVERTER_VERSION}".encode())
    small = [p for p in src.iterdir() if p.is_file() and (p.name == "config.json" or COPIED_FILES.match(p.name))]
    for f in sorted(small):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    for f in weight_files(src):
        st = f.stat()
        h.update(f"{f.name}\0{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def convert_checkpoint(src: str | Path, out: str | Path, source_name: str | None = None) -> dict[str, Any]:
    """Write the Llama form of the MiniCPM checkpoint in `src` to `out` (which must not exist); return the record
    written as CONVERSION_FILE."""
    from huggingface_hub import save_torch_state_dict

    src, out = Path(src), Path(out)
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if not is_minicpm(cfg):
        raise ConversionError(f"{src}: not a MiniCPMForCausalLM checkpoint (architectures {cfg.get('architectures')})")
    if out.exists():
        raise ConversionError(f"{out} exists")
    new_cfg = llama_config(cfg)
    fp = fingerprint(src)
    state = convert_state_dict(load_state_dict(src), cfg)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_torch_state_dict(state, tmp, max_shard_size="5GB")
        (tmp / "config.json").write_text(json.dumps(new_cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        copied = []
        for f in sorted(src.iterdir()):
            if f.is_file() and COPIED_FILES.match(f.name):
                shutil.copyfile(f, tmp / f.name)
                copied.append(f.name)
        record = {
            "converted_from": source_name or str(src), "source_dir": str(src.resolve()), "fingerprint": fp,
            "converter_version": CONVERTER_VERSION, **scalings(cfg),
            "tied_embeddings_untied": bool(_get(cfg, "tie_word_embeddings")),
            "rms_norm_eps": {"minicpm": float(_get(cfg, "rms_norm_eps")), "llama": new_cfg["rms_norm_eps"]},
            "rope_scaling": new_cfg["rope_scaling"], "copied_files": copied,
        }
        (tmp / CONVERSION_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


# ---- the hook ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """What to hand to from_pretrained. `converted`: a MiniCPM checkpoint, now a Llama one at `path`."""

    path: str
    source: str
    converted: bool = False
    reused: bool = False  # the conversion was already in the cache

    def describe(self) -> str:
        if not self.converted:
            return self.source
        how = "cached conversion" if self.reused else "converted now"
        return f"{self.source} (MiniCPM -> Llama, {how}: {self.path})"

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded_from": self.path, "minicpm_converted": self.converted,
                "conversion_reused": self.reused, "summary": self.describe()}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "sftkit")
    return Path(base).expanduser() / "minicpm-llama"


def local_snapshot(name_or_path: str) -> Path:
    """The folder holding the checkpoint: itself, or the hub snapshot (without the remote .py files)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path, allow_patterns=HUB_PATTERNS))


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """One converter at a time per target (torchrun starts one process per GPU, each resolving the model)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _complete(folder: Path, fp: str) -> bool:
    try:
        record = json.loads((folder / CONVERSION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return record.get("fingerprint") == fp and (folder / "config.json").is_file()


def resolve_model(name_or_path: str, cache_dir: str | Path | None = None) -> ResolvedModel:
    """`name_or_path` itself for any model but MiniCPM; for MiniCPM, its cached Llama conversion (made on first use)."""
    cfg = read_config(name_or_path)
    if cfg is None or not is_minicpm(cfg):
        return ResolvedModel(name_or_path, name_or_path)
    src = local_snapshot(name_or_path)
    fp = fingerprint(src)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name_or_path.rstrip("/")).name or "model")
    out = cache_root(cache_dir) / f"{slug}-{fp[:16]}"
    with _locked(out.with_name(f".{out.name}.lock")):
        if _complete(out, fp):
            log.info("%s is a MiniCPM checkpoint: loading its cached Llama conversion %s", name_or_path, out)
            return ResolvedModel(str(out), name_or_path, converted=True, reused=True)
        shutil.rmtree(out, ignore_errors=True)  # a folder without a matching record is not ours to trust
        log.info("%s is a MiniCPM checkpoint: converting it to an equivalent Llama checkpoint in %s",
                 name_or_path, out)
        convert_checkpoint(src, out, source_name=name_or_path)
    return ResolvedModel(str(out), name_or_path, converted=True, reused=False)
