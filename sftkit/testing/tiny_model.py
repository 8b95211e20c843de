"""A tiny random chat model with a real trained tokenizer, for tests and CPU benchmarks (no downloads).

Two tokenizer families, both trained here on the built-in Chinese+English text below, both with MiniCPM4's
conventions (BOS ``<s>`` added by ``tokenizer(text)``, eos ``<|im_end|>``, a ChatML chat_template):
  - ``bpe``: a byte-level BPE trained with `tokenizers` (as Qwen, Llama 3 and GPT-style models use);
  - ``sp-legacy`` / ``sp``: a SentencePiece model trained with `sentencepiece` itself and loaded through
    MiniCPM4's own tokenizer_config keys (``LlamaTokenizer``, ``legacy: true``), or the same with
    ``legacy: false``.
The model is a LlamaConfig: with a Qwen2Config, AutoTokenizer would load Qwen's own tokenizer class and change
the ids of the tokenizer trained here; Llama keeps them. Its head_dim is 32 (hidden 64, 2 heads): vLLM's CPU
attention refuses head sizes below 32.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = """\
哈尔滨工业大学位于黑龙江省哈尔滨市，是一所以理工为主的研究型大学。学校创建于1920年，校训是规格严格，功夫到家。
同学们可以在图书馆借阅图书，也可以在食堂吃饭。宿舍每天晚上十一点熄灯，请大家注意作息时间。
自然语言处理是人工智能的一个重要方向，研究如何让计算机理解和生成人类语言。大语言模型通过监督微调学习回答问题。
请问选课系统什么时候开放？选课系统通常在每学期开学前两周开放，请关注教务处的通知。
你好！我是一个智能助手，很高兴为你服务。有什么问题都可以问我。
今天天气很好，我们去操场跑步吧。运动有益于身体健康，每天坚持锻炼半小时。
保险合同是投保人与保险人约定保险权利义务关系的协议。法律条文需要仔细阅读和理解。
The Harbin Institute of Technology is a public research university in Harbin, China.
Supervised fine-tuning teaches a language model to follow instructions with question and answer pairs.
Students can borrow books from the library and eat in the dining hall. The dormitory lights go out at eleven.
Natural language processing studies how computers understand and generate human language.
Hello! I am a helpful assistant. Ask me anything about courses, exams, libraries or sports.
A tokenizer splits text into tokens; the model predicts the next token given the previous ones.
The quick brown fox jumps over the lazy dog. 1234567890 + - * / = ( ) [ ] { } , . ; : ! ? " '
System: you are a helpful assistant.
User: what is one plus one?
Assistant: one plus one is two.
"""


# MiniCPM4-0.5B's tokenizer_config.json (openbmb/MiniCPM4-0.5B), the keys that decide tokenisation; its other
# added tokens (<|tool_call|>, <|fim_*|> ...) are left out. Written beside a SentencePiece model trained here.
MINICPM4_TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "add_eos_token": False,
    "add_prefix_space": None, "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>", "pad_token": None,
    "additional_special_tokens": ["<|im_end|>", "<|im_start|>"], "clean_up_tokenization_spaces": False,
    "spaces_between_special_tokens": False, "sp_model_kwargs": {}, "use_default_system_prompt": False,
    "chat_template": CHATML_TEMPLATE,
}
TOKENIZER_FAMILIES = ("bpe", "sp-legacy", "sp")


def build_sentencepiece_tokenizer(out_dir: str | Path, legacy: bool = True, vocab_size: int = 800):
    """A SentencePiece BPE model (byte fallback, as Llama/MiniCPM use) trained on CORPUS with `sentencepiece`,
    saved as ``tokenizer.model`` with MiniCPM4's tokenizer_config keys (``legacy`` as given) and loaded back
    with AutoTokenizer, the way a MiniCPM4 checkpoint is. Deterministic."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    corpus.write_text(CORPUS * 4, encoding="utf-8")
    try:
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(out / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, character_coverage=1.0, split_digits=True, add_dummy_prefix=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
        )
    finally:
        corpus.unlink()
    (out / "tokenizer.vocab").unlink(missing_ok=True)
    config = {**MINICPM4_TOKENIZER_CONFIG, "legacy": legacy}
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1) + "\n")
    return AutoTokenizer.from_pretrained(out)


def build_tokenizer(vocab_size: int = 512):
    """A PreTrainedTokenizerFast with byte-level BPE trained on CORPUS (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS.splitlines() * 4, trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    # tokenizer(text) prepends BOS, as MiniCPM4's LlamaTokenizer does (add_bos_token: true).
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>", "</s>"], chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def tiny_llama_config(vocab_size: int, bos_id: int, eos_ids: list[int], pad_id: int, **overrides):
    from transformers import LlamaConfig

    kwargs = {
        "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 2048,
        "bos_token_id": bos_id, "eos_token_id": eos_ids, "pad_token_id": pad_id, "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5, "initializer_range": 0.1,
    }
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def build_tiny_model(out_dir: str | Path, arch: str = "llama", vocab_size: int = 512, seed: int = 0,
                     tokenizer: str = "bpe") -> str:
    """Write a tiny random Llama chat model (model, tokenizer, generation_config) to ``out_dir``; return it.
    ``tokenizer`` is one of TOKENIZER_FAMILIES (``vocab_size`` applies to ``bpe``)."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    if arch != "llama":
        raise ValueError(f"arch {arch!r}: only 'llama' keeps the trained tokenizer's ids when reloaded")
    if tokenizer not in TOKENIZER_FAMILIES:
        raise ValueError(f"tokenizer {tokenizer!r}: choose from {', '.join(TOKENIZER_FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    family = tokenizer
    if family == "bpe":
        tokenizer = build_tokenizer(vocab_size)
    else:
        tokenizer = build_sentencepiece_tokenizer(out, legacy=family == "sp-legacy")
    eos_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("</s>")]
    # MiniCPM4 has no pad token and pads with </s> (its generation_config says pad_token_id 2)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[1]
    config = tiny_llama_config(len(tokenizer), tokenizer.bos_token_id, eos_ids, pad_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids, pad_token_id=pad_id, do_sample=False,
    )
    model.save_pretrained(out)
    if family == "bpe":
        tokenizer.save_pretrained(out)
    # SentencePiece: the folder keeps tokenizer.model + tokenizer_config.json as MiniCPM4 ships them (a
    # save_pretrained would drop `legacy` and the reloaded tokenizer would tokenise differently).
    (out / "tiny_model.json").write_text(json.dumps({"arch": arch, "vocab_size": len(tokenizer), "seed": seed,
                                                     "tokenizer": family}) + "\n")
    return str(out)
