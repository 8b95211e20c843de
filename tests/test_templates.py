"""Chat templates: exact ids and labels, prompt/training prefix identity, agreement with apply_chat_template, and
whole-string tokenisation (what a server does with the rendered text) for every template and tokenizer family:
byte-level BPE and SentencePiece (trained here with `sentencepiece`) loaded legacy and non-legacy."""

from __future__ import annotations

import copy

import pytest

from sftkit.model.templates import (
    IGNORE_INDEX,
    TEMPLATE_NAMES,
    TEMPLATES,
    TemplateError,
    encode_conversation,
    encode_prompt,
    get_template,
    render_text,
    stop_token_ids,
)

SYS = {"role": "system", "content": "你是哈工大助手"}
MULTI = [
    SYS,
    {"role": "user", "content": "你好 {x}"},
    {"role": "assistant", "content": "你好！\n有什么问题？"},
    {"role": "user", "content": "选课什么时候开放?"},
    {"role": "assistant", "content": "开学前两周。"},
    {"role": "user", "content": "谢谢"},
    {"role": "assistant", "content": "不客气 {eos} {content}"},
]

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama 3's own chat template minus its `| trim` (we keep content exactly as written).
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# The shape of Qwen2.5's template: ChatML, plus a default system prompt when the conversation has none.
QWEN_JINJA = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _ids(enc) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)
    return list(enc["input_ids"]) if hasattr(enc, "keys") else list(enc)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


def as_llama3(tokenizer):
    t = copy.deepcopy(tokenizer)
    t.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS})
    t.bos_token = "<|begin_of_text|>"
    t.eos_token = "<|eot_id|>"
    t.chat_template = LLAMA3_JINJA
    return t


@pytest.fixture(scope="module")
def llama3_tok(tiny_tokenizer):
    return as_llama3(tiny_tokenizer)


def test_registry_has_the_required_templates():
    assert {"minicpm4", "chatml", "qwen", "llama3", "default"} <= set(TEMPLATES)
    assert "auto" in TEMPLATE_NAMES
    for t in TEMPLATES.values():
        assert t.stop_words, t.name


def test_minicpm4_ids_and_labels_hand_checked(tok):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "ok"}]
    enc = encode_conversation(get_template("minicpm4"), tok, msgs)
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == [
        "<s>", "<|im_start|>", "s", "y", "st", "e", "m", "Ċ", "S", "<|im_end|>", "Ċ",
        "<|im_start|>", "u", "s", "er", "Ċ", "h", "i", "<|im_end|>", "Ċ",
        "<|im_start|>", "a", "ssistant", "Ċ", "ok", "<|im_end|>", "Ċ",
    ]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ok = tok.convert_tokens_to_ids("ok")
    # only the answer and its <|im_end|> are trained; BOS, system, user, header and the final newline are not
    assert enc["labels"] == [IGNORE_INDEX] * 24 + [ok, im_end, IGNORE_INDEX]
    assert enc["input_ids"][0] == tok.bos_token_id == 1


@pytest.mark.parametrize("name", ["minicpm4", "chatml", "qwen", "default", "auto"])
def test_every_assistant_turn_and_only_it_is_trained(tok, name):
    template = get_template(name, tok)
    enc = encode_conversation(template, tok, MULTI)
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels)
    trained = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in trained)
    # trained spans, decoded, are exactly the three answers each followed by the end-of-turn token
    spans, cur = [], []
    for i, lab in enumerate(labels):
        if lab != IGNORE_INDEX:
            cur.append(ids[i])
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    answers = [m["content"] for m in MULTI if m["role"] == "assistant"]
    assert [tok.decode(s) for s in spans] == [a + "<|im_end|>" for a in answers]
    # system and user text never appear in a trained span
    untrained = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE_INDEX])
    for m in MULTI:
        if m["role"] != "assistant":
            assert m["content"] in untrained


@pytest.mark.parametrize("name", ["minicpm4", "chatml", "qwen", "llama3", "default", "auto"])
def test_prompt_ids_are_a_prefix_of_training_ids_for_every_turn(tok, llama3_tok, name):
    t = llama3_tok if name == "llama3" else tok
    template = get_template(name, t)
    for messages in (MULTI, MULTI[1:]):
        full = encode_conversation(template, t, messages)["input_ids"]
        user_idx = [i for i, m in enumerate(messages) if m["role"] == "user"]
        for k in user_idx:
            prompt = encode_prompt(template, t, messages[: k + 1])
            assert prompt == full[: len(prompt)], (name, k)
            # the prompt ends with the assistant header: the next training token is the first answer token
            assert full[len(prompt)] != t.convert_tokens_to_ids("<|im_start|>")


def test_chatml_equals_apply_chat_template(tok):
    template = get_template("chatml")
    for messages in (MULTI, MULTI[1:], MULTI[:2], MULTI[:4]):
        gen = messages[-1]["role"] == "user"
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert render_text(template, messages, add_generation_prompt=gen) == text
        ids = _ids(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen))
        ours = (encode_prompt(template, tok, messages) if gen
                else encode_conversation(template, tok, messages)["input_ids"])
        assert ours == ids


def test_minicpm4_is_bos_plus_the_chat_template_as_tokenizer_call_encodes_it(tok):
    # MiniCPM4's chat_template has no BOS but its tokenizer adds one: inference that does
    # tokenizer(apply_chat_template(..., tokenize=False)) sees BOS, so training must too (seed 004 defect).
    for messages in (MULTI, MULTI[:5]):
        text = tok.apply_chat_template(messages, tokenize=False)
        assert encode_conversation(get_template("minicpm4"), tok, messages)["input_ids"] == tok(text)["input_ids"]
    prompt_text = tok.apply_chat_template(MULTI[:4], tokenize=False, add_generation_prompt=True)
    assert encode_prompt(get_template("minicpm4"), tok, MULTI[:4]) == tok(prompt_text)["input_ids"]
    assert render_text(get_template("minicpm4"), MULTI, False, bos_token="<s>") == "<s>" + tok.apply_chat_template(
        MULTI, tokenize=False)


def test_auto_derives_the_same_as_minicpm4_from_the_tokenizers_own_template(tok):
    auto, minicpm = get_template("auto", tok), get_template("minicpm4")
    for messages in (MULTI, MULTI[1:]):
        assert encode_conversation(auto, tok, messages) == encode_conversation(minicpm, tok, messages)
    assert stop_token_ids(auto, tok) == [tok.convert_tokens_to_ids("<|im_end|>")]


def test_llama3_equals_apply_chat_template(llama3_tok):
    t = llama3_tok
    template = get_template("llama3")
    for messages in (MULTI, MULTI[1:4]):
        gen = messages[-1]["role"] == "user"
        ids = _ids(t.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen))
        ours = encode_prompt(template, t, messages) if gen else encode_conversation(template, t, messages)["input_ids"]
        assert ours == ids
        assert render_text(template, messages, gen, bos_token="<|begin_of_text|>") == t.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=gen)
    # auto on the same tokenizer agrees too (the template writes BOS itself; it is not doubled)
    assert encode_conversation(get_template("auto", t), t, MULTI) == encode_conversation(template, t, MULTI)
    eot, end = t.convert_tokens_to_ids("<|eot_id|>"), t.convert_tokens_to_ids("<|end_of_text|>")
    assert stop_token_ids(template, t) == [eot, end]
    labels = encode_conversation(template, t, MULTI[:3])["labels"]
    assert t.decode([x for x in labels if x != IGNORE_INDEX]) == "你好！\n有什么问题？<|eot_id|>"


def test_qwen_agrees_with_qwen_template_only_when_a_system_prompt_is_given(tok):
    t = copy.deepcopy(tok)
    t.chat_template = QWEN_JINJA
    qwen = get_template("qwen")
    assert encode_conversation(qwen, t, MULTI)["input_ids"] == _ids(t.apply_chat_template(MULTI, tokenize=True))
    # without a system prompt we inject none (training and inference would otherwise silently differ)
    no_sys = MULTI[1:3]
    assert "system" not in render_text(qwen, no_sys, False)
    assert "You are a helpful assistant" in t.apply_chat_template(no_sys, tokenize=False)
    # `auto` follows the tokenizer's own template, default system prompt included, for training and prompts alike
    auto = get_template("auto", t)
    assert "You are a helpful assistant" in tok.decode(encode_prompt(auto, t, MULTI[1:2]))
    full = encode_conversation(auto, t, no_sys)
    # (this tokenizer adds BOS on encode, so auto does too: compare with tokenizer(rendered text))
    assert full["input_ids"] == t(t.apply_chat_template(no_sys, tokenize=False))["input_ids"]


def test_default_template_for_base_models(tok):
    template = get_template("default")
    msgs = MULTI[:3]
    # no space after "Assistant:": see test_a_header_ending_in_a_space_cannot_match_whole_string_tokenisation
    assert render_text(template, msgs, False) == (
        "System: 你是哈工大助手\n\nUser: 你好 {x}\nAssistant:你好！\n有什么问题？{eos}\n")
    assert render_text(template, msgs[:2], True, bos_token="<s>", eos_token="</s>") == (
        "<s>System: 你是哈工大助手\n\nUser: 你好 {x}\nAssistant:")
    enc = encode_conversation(template, tok, msgs)
    trained = [x for x in enc["labels"] if x != IGNORE_INDEX]
    assert trained[-1] == tok.eos_token_id
    assert stop_token_ids(template, tok) == [tok.eos_token_id]


def test_content_is_kept_verbatim(tok):
    # braces, "{eos}", "{content}" and newlines inside messages are text, not template placeholders
    text = render_text(get_template("chatml"), MULTI, False)
    assert "不客气 {eos} {content}<|im_end|>" in text
    assert "你好 {x}" in text and "你好！\n有什么问题？" in text


def test_truncation_keeps_the_first_tokens(tok):
    template = get_template("minicpm4")
    full = encode_conversation(template, tok, MULTI)
    cut = encode_conversation(template, tok, MULTI, max_seq_length=30)
    assert cut["input_ids"] == full["input_ids"][:30] and cut["labels"] == full["labels"][:30]


def test_errors(tok):
    with pytest.raises(TemplateError, match="unknown template"):
        get_template("vicuna")
    with pytest.raises(TemplateError, match="needs the tokenizer"):
        get_template("auto")
    no_template = copy.deepcopy(tok)
    no_template.chat_template = None
    with pytest.raises(TemplateError, match="no chat_template"):
        get_template("auto", no_template)
    no_bos = copy.deepcopy(tok)
    no_bos.bos_token = None
    with pytest.raises(TemplateError, match="no bos_token"):
        encode_conversation(get_template("minicpm4"), no_bos, MULTI)
    assert encode_conversation(get_template("default"), no_bos, MULTI)["input_ids"][0] != tok.bos_token_id
    with pytest.raises(TemplateError, match="last turn is not an assistant"):
        encode_conversation(get_template("chatml"), tok, MULTI[:2])
    with pytest.raises(TemplateError, match="must end with a user turn"):
        encode_prompt(get_template("chatml"), tok, MULTI[:3])
    with pytest.raises(TemplateError, match="should be user"):
        encode_conversation(get_template("chatml"), tok, [SYS, MULTI[2], MULTI[1]])
    # a chat template that rewrites earlier turns cannot give prompt ids that prefix training ids
    rewriting = copy.deepcopy(tok)
    rewriting.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '<|im_start|>assistant\n"
        "(old)<|im_end|>\n' }}{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    with pytest.raises(TemplateError, match="rewrites earlier turns"):
        encode_conversation(get_template("auto", rewriting), rewriting, MULTI)


# ---- whole-string tokenisation, every template x every tokenizer family ----------------------------------------

# English, Chinese, spaces at turn edges and inside, braces, a newline in an answer
WIDE = [
    SYS,
    {"role": "user", "content": "你好 hello"},
    {"role": "assistant", "content": "你好！\n有什么问题？"},
    {"role": "user", "content": " 选课什么时候开放? "},
    {"role": "assistant", "content": "Hello there. 开学前两周。"},
    {"role": "user", "content": "谢谢"},
    {"role": "assistant", "content": "不客气 {eos} {content}"},
]
FAMILY_TEMPLATES = ["minicpm4", "chatml", "qwen", "llama3", "default", "auto"]


def family_tokenizer(tokenizer_families, family: str, name: str):
    tok = tokenizer_families[family]
    return as_llama3(tok) if name == "llama3" else tok


def reference_ids(template, tok, messages, add_generation_prompt: bool) -> list[int]:
    """Whole-string tokenisation of the rendered text, BOS written as text, as a server tokenises it."""
    if template.jinja is not None:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        first = tok("a", add_special_tokens=True)["input_ids"]
        bos = tok.bos_token if first and first[0] == tok.bos_token_id and not text.startswith(tok.bos_token) else ""
    else:
        text = render_text(template, messages, add_generation_prompt, eos_token=tok.eos_token)
        bos = tok.bos_token if template.bos == "required" or (template.bos == "if_available" and tok.bos_token) else ""
    return list(tok(bos + text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("family", ["bpe", "sp-legacy", "sp"])
@pytest.mark.parametrize("name", FAMILY_TEMPLATES)
def test_training_and_prompt_ids_are_whole_string_tokenisation(tokenizer_families, family: str, name: str):
    tok = family_tokenizer(tokenizer_families, family, name)
    template = get_template(name, tok)
    for messages in (WIDE, WIDE[1:]):
        enc = encode_conversation(template, tok, messages)
        assert enc["input_ids"] == reference_ids(template, tok, messages, False)
        for k in [i for i, m in enumerate(messages) if m["role"] == "user"]:
            prompt = encode_prompt(template, tok, messages[: k + 1])
            assert prompt == reference_ids(template, tok, messages[: k + 1], True), (k, prompt)
            assert prompt == enc["input_ids"][: len(prompt)]
            assert enc["labels"][len(prompt) - 1] == IGNORE_INDEX and enc["labels"][len(prompt)] != IGNORE_INDEX
        # labels: each answer and its end-of-turn text, nothing else
        ids, labels = enc["input_ids"], enc["labels"]
        spans, cur = [], []
        for t, lab in zip(ids, labels, strict=True):
            if lab != IGNORE_INDEX:
                assert lab == t
                cur.append(t)
            elif cur:
                spans.append(cur)
                cur = []
        spans += [cur] if cur else []
        end = {"llama3": "<|eot_id|>", "default": tok.eos_token}.get(name, "<|im_end|>")
        answers = [m["content"] + end for m in messages if m["role"] == "assistant"]
        assert [tok.decode(s) for s in spans] == answers


def test_legacy_sentencepiece_writes_a_prefix_space_after_special_tokens(tokenizer_families):
    # What makes the test above bite: tokenising each piece of a conversation on its own (behind a newline that is
    # then removed, as this module once did) loses the "▁" that whole-string tokenisation puts after
    # <|im_end|> under legacy SentencePiece; the 121-of-154-prompts defect on the Firefly sample.
    template = get_template("minicpm4")
    for family, expect in (("sp-legacy", True), ("sp", False), ("bpe", False)):
        tok = tokenizer_families[family]
        tokens = tok.convert_ids_to_tokens(encode_conversation(template, tok, MULTI[:5])["input_ids"])
        after_end = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "<|im_end|>"]
        assert ("▁" in after_end) is expect, (family, after_end)
        piece = "\n<|im_start|>user\n"  # the text after an answer's <|im_end|>
        newline = tok("\n", add_special_tokens=False)["input_ids"]
        behind_newline = tok("\n" + piece, add_special_tokens=False)["input_ids"]
        assert behind_newline[: len(newline)] == newline
        in_context = tok("<|im_end|>" + piece, add_special_tokens=False)["input_ids"][1:]
        assert (behind_newline[len(newline):] != in_context) is expect, family


def test_a_header_ending_in_a_space_cannot_match_whole_string_tokenisation(tokenizer_families):
    # Why `default` has no space after "Assistant:": with one, SentencePiece merges that space into the answer's
    # first piece ("▁你"), so the prompt a server tokenises ends in a lone "▁" that the training text never has.
    # Such a cut is split (prompt ids stay a prefix of training ids) instead of silently misaligned.
    from dataclasses import replace

    tok = tokenizer_families["sp-legacy"]
    spaced = replace(get_template("default"), name="spaced", assistant_header="Assistant: ")
    messages = MULTI[:3]
    prompt = encode_prompt(spaced, tok, messages[:2])
    full = encode_conversation(spaced, tok, messages)["input_ids"]
    assert prompt == reference_ids(spaced, tok, messages[:2], True) and full[: len(prompt)] == prompt
    assert full != reference_ids(spaced, tok, messages, False)
    assert tok.convert_ids_to_tokens(prompt)[-1] == "▁"


@pytest.mark.parametrize("family", ["bpe", "sp-legacy", "sp"])
@pytest.mark.parametrize("name", FAMILY_TEMPLATES)
def test_saved_chat_template_renders_the_training_ids(tokenizer_families, family: str, name: str):
    # transformers' own jinja rendering + tokenisation of the template we save (what `transformers serve`, vLLM
    # and SGLang do) against our encoding
    from sftkit.model.templates import chat_template_jinja

    tok = family_tokenizer(tokenizer_families, family, name)
    template = get_template(name, tok)
    served = copy.deepcopy(tok)
    served.chat_template = chat_template_jinja(template, tok)
    for messages in (WIDE, WIDE[1:], WIDE[:2], WIDE[1:4]):
        gen = messages[-1]["role"] == "user"
        ours = encode_prompt(template, tok, messages) if gen else encode_conversation(template, tok, messages)[
            "input_ids"]
        assert _ids(served.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)) == ours
    if template.jinja is None:
        text = served.apply_chat_template(WIDE, tokenize=False)
        bos = tok.bos_token if template.bos in ("required", "if_available") else None
        assert text == render_text(template, WIDE, False, bos_token=bos, eos_token=tok.eos_token)


def test_save_chat_files_keeps_legacy_and_adds_stop_tokens(tokenizer_families, tmp_path):
    import json

    from transformers import AutoTokenizer, GenerationConfig

    from sftkit.model.templates import save_chat_files

    tok = tokenizer_families["sp-legacy"]
    template = get_template("minicpm4")
    GenerationConfig(eos_token_id=2, bos_token_id=1).save_pretrained(tmp_path)  # as a model that stops on </s> only
    written = save_chat_files(tmp_path, template, tok)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["legacy"] is True
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for k in (1, 3, 5):
        assert encode_prompt(template, reloaded, WIDE[: k + 1]) == encode_prompt(template, tok, WIDE[: k + 1])
    assert _ids(reloaded.apply_chat_template(WIDE[:4], tokenize=True, add_generation_prompt=True)) == encode_prompt(
        template, tok, WIDE[:4])
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert GenerationConfig.from_pretrained(tmp_path).eos_token_id == [2, im_end] == written["eos_token_id"]
    assert tok.chat_template != written["chat_template"]  # the caller's tokenizer is left as it was
    assert written["roundtrip_ok"] is True
