"""MiniCPM4 as downloaded, under transformers 5: the Llama conversion against a plain-torch MiniCPM forward written
from the remote code's math (tests/minicpm_reference.py, cross-checked once against the original code), training
(LoRA, QLoRA, full; the shipped argument files), merge, and the merged model in transformers and vLLM."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftkit.model import minicpm
from sftkit.model.minicpm import ConversionError, resolve_model
from tests.minicpm_reference import REAL_FACTORS, MiniCPMReference, build_tiny_minicpm
from tests.test_infer import infer_cli
from tests.test_train import CONVS, _args
from train import convert_minicpm, merge_lora, train

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
TOL = 1e-4  # float32 logits


@pytest.fixture(scope="module", autouse=True)
def conversion_cache(tmp_path_factory: pytest.TempPathFactory):
    """Conversions go to a temporary cache, never to ~/.cache."""
    old = os.environ.get(minicpm.CACHE_ENV)
    os.environ[minicpm.CACHE_ENV] = str(tmp_path_factory.mktemp("sftkit-cache"))
    yield os.environ[minicpm.CACHE_ENV]
    if old is None:
        os.environ.pop(minicpm.CACHE_ENV, None)
    else:
        os.environ[minicpm.CACHE_ENV] = old


REMOTE_CODE_TRAP = "raise RuntimeError('remote code of the checkpoint was imported')\n"


@pytest.fixture(scope="module")
def minicpm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random MiniCPM4 checkpoint as downloaded: bf16 weights, tied embeddings, the real LongRoPE factors,
    an auto_map, and remote-code files that fail if anything imports them."""
    path = build_tiny_minicpm(tmp_path_factory.mktemp("minicpm") / "MiniCPM4-tiny", seed=0)
    for name in ("configuration_minicpm.py", "modeling_minicpm.py"):
        (Path(path) / name).write_text(REMOTE_CODE_TRAP)
    return path


@pytest.fixture(scope="module")
def converted(minicpm_dir: str) -> str:
    return resolve_model(minicpm_dir).path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sftdata") / "train.jsonl"
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in CONVS), encoding="utf-8")
    return str(path)


def _llama(path: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def _ids(vocab: int, batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ logits equality


def test_converted_logits_equal_minicpm_reference(minicpm_dir: str, converted: str) -> None:
    ref = MiniCPMReference.from_checkpoint(minicpm_dir)
    exact = MiniCPMReference.from_checkpoint(minicpm_dir, exact_angles=True)
    ours = _llama(converted)
    assert type(ours).__name__ == "LlamaForCausalLM"
    vocab = ref.cfg["vocab_size"]
    for n in (1, 7, 64, 256, 1024):
        ids = _ids(vocab, 2, n, seed=n)
        with torch.no_grad():
            want, got = ref(ids), ours(ids).logits.float()
            floor = (want - exact(ids)).abs().max().item()
        diff = (want - got).abs().max().item()
        assert want.abs().max().item() > 1  # real logits, not a degenerate model
        # Near position 1000 the float32 rounding of RoPE angles (~1e-4 rad) moves the remote code's own logits
        # by `floor` from the same math in exact angles; the conversion is held to 1e-4 beyond that.
        assert diff <= TOL + (floor if n > 256 else 0.0), (n, diff, floor)


def _longrope(short: list[float], long: list[float], original: int) -> dict:
    return {"rope_type": "longrope", "short_factor": short, "long_factor": long,
            "original_max_position_embeddings": original}


HALF = [1 + (f - 1) / 2 for f in REAL_FACTORS]
VARIANTS = {
    # max_position_embeddings > original: the remote code uses the long factors for every length.
    "long-everywhere": {"max_position_embeddings": 128, "rope_scaling": _longrope(HALF, REAL_FACTORS, 64)},
    # max < original: short factors up to the original length, long beyond; attention factor below 1.
    "short-then-long": {"max_position_embeddings": 96, "rope_scaling": _longrope(HALF, REAL_FACTORS, 128)},
    # no rope scaling, separate lm_head (MiniCPM 1/2 style), attention biases.
    "plain-untied": {"rope_scaling": None, "tie_word_embeddings": False, "attention_bias": True},
    "linear": {"rope_scaling": {"rope_type": "linear", "factor": 4.0}, "rope_theta": 50000.0},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rope_variants_and_untied_heads_equal_the_reference(variant: str, tmp_path: Path) -> None:
    src = build_tiny_minicpm(tmp_path / variant, seed=3, **VARIANTS[variant])
    ours = _llama(resolve_model(src).path)
    ref = MiniCPMReference.from_checkpoint(src)
    record = json.loads((Path(resolve_model(src).path) / minicpm.CONVERSION_FILE).read_text())
    rope = ours.config.rope_parameters
    if variant == "short-then-long":
        assert math.isclose(rope["attention_factor"], math.sqrt(1 + math.log(96 / 128) / math.log(128)))
        assert rope["attention_factor"] < 1 and rope["short_mscale"] == rope["attention_factor"]
    if variant == "long-everywhere":
        assert rope["short_factor"] == rope["long_factor"] == REAL_FACTORS
    assert record["tied_embeddings_untied"] is (variant != "plain-untied")
    for n in (5, 100, 200):
        ids = _ids(ref.cfg["vocab_size"], 1, n, seed=n)
        with torch.no_grad():
            diff = (ref(ids) - ours(ids).logits).abs().max().item()
        assert diff <= TOL, (variant, n, diff)


def test_the_eps_rule_is_what_keeps_small_activations_right(tmp_path: Path) -> None:
    """Tiny embeddings make RMSNorm's eps count: eps / c^2 matches, the original eps would not (the test can fail).
    The logits are tiny too (tied head), so the bounds are relative to their size."""
    src = build_tiny_minicpm(tmp_path / "small-embeddings", seed=1, embed_std=3e-4)
    ours = _llama(resolve_model(src).path)
    ref = MiniCPMReference.from_checkpoint(src)
    ids = _ids(ref.cfg["vocab_size"], 2, 32)
    with torch.no_grad():
        want = ref(ids)
        size = want.abs().max().item()
        assert (want - ours(ids).logits).abs().max().item() <= 1e-4 * size
        for module in ours.modules():
            if hasattr(module, "variance_epsilon"):
                module.variance_epsilon = ref.cfg["rms_norm_eps"]
        assert (want - ours(ids).logits).abs().max().item() > 0.1 * size


# ------------------------------------------------------------------------------------------ the converted folder


def test_converted_folder_is_a_plain_llama_with_the_same_tokenizer(minicpm_dir: str, converted: str) -> None:
    import sentencepiece as spm
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, GenerationConfig

    cfg = json.loads((Path(converted) / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama" and "auto_map" not in cfg
    assert not list(Path(converted).glob("*.py"))
    src = load_file(str(Path(minicpm_dir) / "model.safetensors"))
    out = {}
    for f in Path(converted).glob("*.safetensors"):
        out.update(load_file(str(f)))
    # every attention/MLP/norm weight bit for bit (QLoRA quantizes the same tensors); only embeddings + lm_head change
    assert set(out) == set(src) | {"lm_head.weight"}
    for name, tensor in src.items():
        if name != "model.embed_tokens.weight":
            assert tensor.dtype == out[name].dtype and torch.equal(tensor, out[name]), name
    c = 1.4 / math.sqrt(8)
    emb = src["model.embed_tokens.weight"].double()
    assert torch.allclose(out["model.embed_tokens.weight"].double(), emb * 12 / c, rtol=1e-7, atol=0)
    assert torch.allclose(out["lm_head.weight"].double(), emb * 256 / 192, rtol=1e-7, atol=0)
    assert math.isclose(cfg["rms_norm_eps"], 1e-5 / c**2)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "generation_config.json"):
        assert (Path(converted) / name).read_bytes() == (Path(minicpm_dir) / name).read_bytes(), name
    tok = AutoTokenizer.from_pretrained(converted, trust_remote_code=True)
    sp = spm.SentencePieceProcessor(model_file=str(Path(minicpm_dir) / "tokenizer.model"))
    for text in ("哈尔滨工业大学位于黑龙江省。", "Hello world 123", "规格严格，功夫到家"):
        assert tok(text)["input_ids"] == [1, *sp.encode(text)]  # BOS added, as MiniCPM4's tokenizer does
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == im_end and GenerationConfig.from_pretrained(converted).eos_token_id == [2, im_end]
    assert tok.chat_template == json.loads((Path(minicpm_dir) / "tokenizer_config.json").read_text())["chat_template"]


def test_conversion_is_cached_and_follows_the_weights(tmp_path: Path) -> None:
    src = Path(build_tiny_minicpm(tmp_path / "m", seed=5, num_hidden_layers=2))
    first = resolve_model(str(src))
    again = resolve_model(str(src))
    assert first.converted and not first.reused and again.reused and again.path == first.path
    assert "cached conversion" in again.describe()
    build_tiny_minicpm(src, seed=6, num_hidden_layers=2)  # new weights in the same folder
    changed = resolve_model(str(src))
    assert not changed.reused and changed.path != first.path
    assert not any(p.name.endswith((".tmp", ".new")) or ".tmp-" in p.name for p in Path(first.path).parent.iterdir())
    plain = resolve_model(str(tmp_path))  # not a model folder at all: handed on unchanged
    assert plain.path == str(tmp_path) and not plain.converted


def test_a_hub_id_is_converted_offline_without_its_remote_code(minicpm_dir: str, tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--openbmb--MiniCPM4-tiny"
    snap = repo / "snapshots" / commit
    shutil.copytree(minicpm_dir, snap)  # with its remote-code trap files
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           minicpm.CACHE_ENV: str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    code = ("import json; from sftkit.model.minicpm import resolve_model; "
            "print(json.dumps([resolve_model('openbmb/MiniCPM4-tiny').as_dict() for _ in range(2)]))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    first, second = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first["minicpm_converted"] and not first["conversion_reused"] and second["conversion_reused"]
    out = Path(first["loaded_from"])
    assert out.parent == tmp_path / "cache" / "minicpm-llama" and not list(out.glob("*.py"))
    assert json.loads((out / minicpm.CONVERSION_FILE).read_text())["converted_from"] == "openbmb/MiniCPM4-tiny"


BAD_CONFIGS = [
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "quantized MiniCPM"),
    ({"sparse_config": {"kernel_size": 32}}, "sparse attention"),
    ({"pretraining_tp": 2}, "pretraining_tp"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "'dynamic' is not converted"),
    ({"rope_scaling": _longrope([1.0] * 4, [1.0] * 4, 64)}, "need 32 values each"),
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": REAL_FACTORS, "long_factor": REAL_FACTORS}},
     "needs original_max_position_embeddings"),
    ({"rope_scaling": {"rope_type": "linear"}}, "needs a positive factor"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONFIGS)
def test_checkpoints_that_cannot_convert_exactly_are_refused(minicpm_dir: str, tmp_path: Path, change: dict,
                                                             message: str) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(minicpm_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(change)
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=message):
        resolve_model(str(bad))


def test_weights_that_do_not_fit_a_llama_are_refused(minicpm_dir: str, tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(minicpm_dir, bad)
    sd = load_file(str(bad / "model.safetensors"))
    sd["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(bad / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"missing 1 weight.*up_proj.*no place for.*extra"):
        resolve_model(str(bad))
    (bad / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match="no weights"):
        resolve_model(str(bad))
    assert convert_minicpm.main(["--model", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "no weights" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_converter_command(minicpm_dir: str, converted: str, tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "llama"
    assert convert_minicpm.main(["--model", minicpm_dir, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "LlamaForCausalLM" in printed and "untied" in printed and "tokenizer.model" in printed
    assert load_file(str(out / "model.safetensors")).keys() == load_file(str(Path(converted) /
                                                                              "model.safetensors")).keys()
    assert convert_minicpm.main(["--model", minicpm_dir, "--out", str(out)]) == 2
    assert "exists (use --overwrite)" in capsys.readouterr().err
    assert convert_minicpm.main(["--model", minicpm_dir, "--out", str(out), "--overwrite"]) == 0
    assert convert_minicpm.main(["--model", str(out), "--out", str(tmp_path / "again")]) == 2
    assert "not a MiniCPM checkpoint" in capsys.readouterr().err
    assert convert_minicpm.main(["--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


# ------------------------------------------------------------------------------------------ training


def _lora_delta(adapter: Path) -> dict[str, torch.Tensor]:
    """module name -> (alpha / r) * B @ A, read from the adapter files (no peft)."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert not cfg.get("rank_pattern") and not cfg.get("alpha_pattern") and not cfg.get("use_rslora")
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    scale = cfg["lora_alpha"] / cfg["r"]
    out = {}
    for key, a in weights.items():
        if key.endswith("lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = weights[key.replace("lora_A", "lora_B")]
            out[module] = scale * b.double() @ a.double()
    return out


def test_lora_trains_exactly_as_on_the_original_architecture(minicpm_dir: str, converted: str) -> None:
    """Same LoRA init, same batches, AdamW: the converted Llama and the MiniCPM reference follow the same trajectory,
    because no linear layer was rescaled (a LoRA delta on o_proj is scaled by c in both)."""
    from peft import LoraConfig, get_peft_model, inject_adapter_in_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=targets, init_lora_weights=True)
    ours = get_peft_model(_llama(converted), config)
    ref = inject_adapter_in_model(config, MiniCPMReference.from_checkpoint(minicpm_dir))
    ours_lora = {n.removeprefix("base_model.model."): p for n, p in ours.named_parameters() if "lora_" in n}
    ref_lora = {n: p for n, p in ref.named_parameters() if "lora_" in n}
    assert ours_lora.keys() == ref_lora.keys() and len(ours_lora) == 2 * 7 * 8
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in ours_lora.items():  # B starts at 0 (peft's default); give it values so o_proj's c counts
            p.copy_(torch.randn_like(p) * 0.05)
            ref_lora[name].copy_(p)
    for name, p in ref.named_parameters():
        p.requires_grad_("lora_" in name)
    opt_ours = torch.optim.AdamW(list(ours_lora.values()), lr=1e-2)
    opt_ref = torch.optim.AdamW(list(ref_lora.values()), lr=1e-2)
    ids = _ids(ref.cfg["vocab_size"], 2, 48, seed=7)
    losses, grad_errors = [], []
    for step in range(8):
        loss_ours = ours(input_ids=ids, labels=ids).loss
        logits = ref(ids)
        loss_ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     ids[:, 1:].reshape(-1))
        for opt, loss in ((opt_ours, loss_ours), (opt_ref, loss_ref)):
            opt.zero_grad()
            loss.backward()
        if step == 0:  # gradients compared before Adam's normalisation can amplify rounding in near-zero ones
            grad_errors = [((ours_lora[n].grad - ref_lora[n].grad).norm() / ref_lora[n].grad.norm()).item()
                           for n in ours_lora]
        opt_ours.step()
        opt_ref.step()
        losses.append((loss_ours.item(), loss_ref.item()))
    assert losses[-1][0] < losses[0][0] - 0.5, losses
    assert max(abs(a - b) for a, b in losses) < 1e-4, losses
    assert max(grad_errors) < 1e-4, max(grad_errors)


def _train_args(tmp_path: Path, model: str, data: str, **over) -> dict:
    """test_train's arguments (CPU, fp32, constant lr 1e-2, r=8), with trust_remote_code as the shipped files have."""
    return _args(tmp_path, model, {"train": data}, **{"trust_remote_code": True, "max_steps": 12, **over})


def _train(tmp_path: Path, args: dict, *extra: str) -> dict:
    path = tmp_path / "args.json"
    path.write_text(json.dumps(args), encoding="utf-8")
    assert train.main(["--train_args_file", str(path), *extra]) == 0
    return json.loads((Path(args["output_dir"]) / train.SUMMARY_FILE).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def lora_adapter(minicpm_dir: str, data: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("lora-run")
    args = _train_args(tmp, minicpm_dir, data, max_steps=30)
    summary = _train(tmp, args)
    assert summary["last_loss"] < 0.3 * summary["first_loss"]
    return args["output_dir"]


@pytest.mark.parametrize("mode", ["lora", "qlora", "full"])
def test_training_on_minicpm_lowers_the_loss(mode: str, minicpm_dir: str, data: str, tmp_path: Path,
                                             capsys) -> None:
    args = _train_args(tmp_path, minicpm_dir, data, train_mode=mode, activation_checkpointing=mode != "full",
                       learning_rate=3e-3 if mode == "full" else 1e-2)
    s = _train(tmp_path, args)
    assert s["last_loss"] < 0.7 * s["first_loss"], s
    assert s["model"] == minicpm_dir and s["model_loaded"]["minicpm_converted"]
    assert "MiniCPM -> Llama" in capsys.readouterr().out  # said on the summary screen
    assert s["linear4bit_layers"] == (7 * 8 if mode == "qlora" else 0)
    assert json.loads((Path(args["output_dir"]) / train.TEMPLATE_FILE).read_text())["base_model"] == minicpm_dir


def test_shipped_qlora_argument_file_runs_as_it_is(minicpm_dir: str, data: str, tmp_path: Path,
                                                   monkeypatch) -> None:
    """train/args/minicpm4-0.5b-qlora.json (trust_remote_code, bf16, paged AdamW, checkpointing, r=64) with only the
    model, data, output, CPU and a step count set from outside."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    rc = train.main(["--train_args_file", "train/args/minicpm4-0.5b-qlora.json", "--set",
                     f"model_name_or_path={minicpm_dir}", "--set", f"train_file={data}", "--set",
                     f"output_dir={out}", "--set", "use_cpu=true", "--set", "max_steps=1", "--set",
                     "gradient_accumulation_steps=2"])
    assert rc == 0
    s = json.loads((out / train.SUMMARY_FILE).read_text())
    assert s["global_step"] == 1 and s["linear4bit_layers"] == 56 and s["precision"] == "torch.bfloat16"
    assert (out / "adapter_config.json").is_file()


def test_a_minicpm_that_cannot_convert_stops_train_and_merge_with_exit_2(minicpm_dir: str, data: str,
                                                                        lora_adapter: str, tmp_path: Path,
                                                                        capsys) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(minicpm_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["sparse_config"] = {"kernel_size": 32}
    (bad / "config.json").write_text(json.dumps(cfg))
    path = tmp_path / "a.json"
    path.write_text(json.dumps(_train_args(tmp_path, str(bad), data)))
    assert train.main(["--train_args_file", str(path)]) == 2
    assert "sparse attention" in capsys.readouterr().err
    assert merge_lora.main(["--base", str(bad), "--adapter", lora_adapter, "--out", str(tmp_path / "m")]) == 2
    assert "sparse attention" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ merge and serve


VLLM_SCRIPT = """
import json, sys

def main():
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    model, prompts, out, n = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3], int(sys.argv[4])
    llm = LLM(model=model, dtype="float32", max_model_len=512, seed=0, enforce_eager=True)
    params = SamplingParams(temperature=0, max_tokens=n, stop_token_ids=json.loads(sys.argv[5]))
    results = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    json.dump([list(r.outputs[0].token_ids) for r in results], open(out, "w"))

if __name__ == "__main__":
    main()
"""


def _cut(ids: list[int], stops: list[int]) -> list[int]:
    """The answer ids before the first stop id (engines differ on whether they return the stop id itself)."""
    return next((ids[:i] for i, t in enumerate(ids) if t in stops), ids)


def _prompts(tokenizer) -> list[list[int]]:
    from sftkit.model.templates import encode_prompt, get_template

    template = get_template("minicpm4", tokenizer)
    return [encode_prompt(template, tokenizer, [{"role": "user", "content": c["conversation"][0]["human"]}])
            for c in CONVS]


def test_merged_model_is_a_plain_llama_and_hf_vllm_and_minicpm_agree(minicpm_dir: str, lora_adapter: str,
                                                                      tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    merged = tmp_path / "merged"
    assert merge_lora.main(["--trust_remote_code", "--base", minicpm_dir, "--adapter", lora_adapter, "--out",
                            str(merged), "--dtype", "float32"]) == 0  # as `make merge` calls it
    cfg = json.loads((merged / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "auto_map" not in cfg and not list(merged.glob("*.py"))
    assert "MiniCPM -> Llama" in json.loads((merged / "merge_summary.json").read_text())["base_loaded"]

    # The outside reference: MiniCPM's math on the ORIGINAL weights plus the adapter's deltas.
    sd = load_file(str(Path(minicpm_dir) / "model.safetensors"))
    deltas = _lora_delta(Path(lora_adapter))
    assert len(deltas) == 7 * 8
    for module, delta in deltas.items():
        sd[f"{module}.weight"] = (sd[f"{module}.weight"].double() + delta).float()
    ref = MiniCPMReference(json.loads((Path(minicpm_dir) / "config.json").read_text()))
    ref.load_state_dict({k: v.float() for k, v in sd.items()})
    ref.eval()
    hf = _llama(str(merged))
    tokenizer = AutoTokenizer.from_pretrained(merged)
    prompts = _prompts(tokenizer)
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            assert (ref(ids) - hf(ids).logits).abs().max().item() <= TOL
    n, stops = 16, [tokenizer.convert_tokens_to_ids("<|im_end|>"), 2]
    want = [_cut(ref.greedy(p, n, set(stops)), stops) for p in prompts]
    with torch.no_grad():
        got = [_cut(hf.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, eos_token_id=stops)[0, len(p):]
                    .tolist(), stops) for p in prompts]
    assert got == want
    answer = tokenizer.decode(want[1], skip_special_tokens=True)
    assert answer.startswith("开学前两周开放"), answer  # the trained answer: the adapter did its work

    if not VLLM_PYTHON.is_file():
        pytest.skip(f"{VLLM_PYTHON} not installed: vLLM part not run")
    script, prompts_file, out = tmp_path / "vllm_greedy.py", tmp_path / "prompts.json", tmp_path / "vllm.json"
    script.write_text(VLLM_SCRIPT)
    prompts_file.write_text(json.dumps(prompts))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run([str(VLLM_PYTHON), str(script), str(merged), str(prompts_file), str(out), str(n),
                           json.dumps(stops)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [_cut(ids, stops) for ids in json.loads(out.read_text())] == want


def test_infer_hf_answers_a_minicpm_as_downloaded_like_the_reference(minicpm_dir: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"messages": [{"role": "user", "content": c["conversation"][0]["human"]}]},
                                      ensure_ascii=False) + "\n" for c in CONVS), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    err = io.StringIO()
    rc = infer_cli.main(["--backend", "hf", "--model", minicpm_dir, "--trust-remote-code", "--input",
                                 str(src), "--output", str(out), "--temperature", "0", "--max-new-tokens", "8"],
                                stdout=io.StringIO(), stderr=err)
    assert rc == 0, err.getvalue()
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(minicpm_dir, trust_remote_code=False)
    ref = MiniCPMReference.from_checkpoint(minicpm_dir)
    stops = {tokenizer.convert_tokens_to_ids("<|im_end|>"), 2}
    for row, prompt in zip(rows, _prompts(tokenizer), strict=True):
        ids = ref.greedy(prompt, 8, stops)
        ids = ids[:-1] if ids and ids[-1] in stops else ids
        assert row["response"] == tokenizer.decode(ids, skip_special_tokens=True)
        assert row["prompt_tokens"] == len(prompt)
