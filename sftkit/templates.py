"""Chat templates: the one place where a conversation becomes token ids, for training and inference alike.

A template renders ``[BOS] [system] user_1 header a_1 end sep user_2 header a_2 end sep ...``.
Tokenization is piecewise: the conversation is cut into segments at turn boundaries, each segment is tokenized
on its own (``add_special_tokens=False``), and the BOS id is added by the template when it says so. The prompt
for turn k (``encode_prompt``) is made of exactly the same segments as the first part of the training example
(``encode_conversation``), so the ids inference feeds the model are a prefix of the ids it was trained on.

Labels: -100 on BOS, system, user turns and every piece of template framing (the assistant header and the
separator after the end-of-turn text); each assistant turn's content plus its end-of-turn text are trained.

No template injects a default system prompt: what the record carries is what both training and inference see.

Segments after the first are tokenized behind a newline that is then removed again, so SentencePiece tokenizers
do not add their start-of-text prefix space in the middle of a conversation (the same trick transformers uses
when it encodes a chat in pieces); byte-level BPE tokenizers are unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sftkit.records import RecordError, check_messages

IGNORE_INDEX = -100
EOS_PLACEHOLDER = "{eos}"
# End-of-turn strings that the `auto` template recognises in a tokenizer's own chat template.
KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>", "</s>", "<|eom_id|>")

Message = dict[str, str]


class TemplateError(ValueError):
    """A template that cannot be used with this tokenizer or these messages; the message is the reason."""


@dataclass(frozen=True)
class Template:
    """How a conversation is written out.

    ``*_format`` strings hold ``{content}``; ``{eos}`` in ``assistant_end``/``stop_words`` is the tokenizer's
    eos token. ``bos`` is "never", "required" (the tokenizer must have a BOS token) or "if_available".
    ``jinja`` is set only for ``auto``: the tokenizer's own chat template, rendered instead of the formats.
    """

    name: str
    user_format: str = ""
    assistant_header: str = ""
    assistant_end: str = ""
    turn_sep: str = ""
    system_format: str | None = None
    bos: str = "never"
    stop_words: tuple[str, ...] = ()
    jinja: str | None = None
    jinja_vars: tuple[tuple[str, str], ...] = ()
    description: str = ""


_CHATML = {
    "system_format": "<|im_start|>system\n{content}<|im_end|>\n",
    "user_format": "<|im_start|>user\n{content}<|im_end|>\n",
    "assistant_header": "<|im_start|>assistant\n",
    "assistant_end": "<|im_end|>",
    "turn_sep": "\n",
    "stop_words": ("<|im_end|>",),
}

TEMPLATES: dict[str, Template] = {
    "minicpm4": Template(
        name="minicpm4", bos="required", **_CHATML,
        description="ChatML preceded by the BOS <s> that MiniCPM4's tokenizer adds (add_bos_token: true)",
    ),
    "chatml": Template(name="chatml", **_CHATML, description="ChatML without BOS and without a default system"),
    "qwen": Template(
        name="qwen", **_CHATML,
        description="Qwen2/2.5 ChatML; unlike Qwen's own template no default system prompt is injected",
    ),
    "llama3": Template(
        name="llama3",
        system_format="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user_format="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant_end="<|eot_id|>",
        turn_sep="",
        bos="required",
        stop_words=("<|eot_id|>", "<|end_of_text|>"),
        description="Llama 3 / 3.1 headers (content is not trimmed; no date system prompt)",
    ),
    "default": Template(
        name="default",
        system_format="System: {content}\n\n",
        user_format="User: {content}\n",
        assistant_header="Assistant: ",
        assistant_end=EOS_PLACEHOLDER,
        turn_sep="\n",
        bos="if_available",
        stop_words=(EOS_PLACEHOLDER,),
        description="plain-text turns for base models without a chat format; each answer ends with eos",
    ),
}
TEMPLATE_NAMES = (*TEMPLATES, "auto")


def get_template(name: str, tokenizer: Any = None) -> Template:
    """The registered template ``name``; ``auto`` wraps ``tokenizer.chat_template`` (tokenizer needed)."""
    if name == "auto":
        if tokenizer is None:
            raise TemplateError("template 'auto' needs the tokenizer (its chat_template)")
        jinja = getattr(tokenizer, "chat_template", None)
        if not isinstance(jinja, str) or not jinja:
            raise TemplateError("template 'auto': the tokenizer has no chat_template; pick a named template")
        jinja_vars = tuple(
            (key, str(tok))
            for key, tok in (("bos_token", tokenizer.bos_token), ("eos_token", tokenizer.eos_token),
                             ("pad_token", tokenizer.pad_token), ("unk_token", tokenizer.unk_token))
            if tok is not None
        )
        stops = tuple(w for w in KNOWN_END_OF_TURN if w in jinja)
        return Template(name="auto", jinja=jinja, jinja_vars=jinja_vars, bos="if_tokenizer_adds",
                        stop_words=(*stops, EOS_PLACEHOLDER), description="the tokenizer's own chat_template")
    if name not in TEMPLATES:
        raise TemplateError(f"unknown template {name!r}; known: {', '.join(TEMPLATE_NAMES)}")
    return TEMPLATES[name]


# ----------------------------------------------------------------------------------------------------------------
# segments


@dataclass(frozen=True)
class _Segment:
    text: str
    trained: bool
    ends_user_turn: bool = False  # the segment closes with a generation prompt for the next answer


def _fill(fmt: str, content: str, eos: str | None) -> str:
    # str.replace, not str.format: content may hold braces. The format is filled before content goes in, so a
    # literal "{eos}" or "{content}" inside a message stays as written.
    if EOS_PLACEHOLDER in fmt:
        if eos is None:
            raise TemplateError("the template ends answers with the eos token but the tokenizer has none")
        fmt = fmt.replace(EOS_PLACEHOLDER, eos)
    return fmt.replace("{content}", content)


def _split_system(messages: Sequence[Message]) -> tuple[str | None, list[Message]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], list(messages[1:])
    return None, list(messages)


def _format_segments(template: Template, messages: Sequence[Message], eos: str | None) -> list[_Segment]:
    system, turns = _split_system(messages)
    segs: list[_Segment] = []
    pending = ""  # untrained text waiting to be joined to the next untrained segment
    if system is not None:
        if template.system_format is None:
            raise TemplateError(f"template {template.name!r} has no system turn")
        pending += _fill(template.system_format, system, eos)
    for turn in turns:
        if turn["role"] == "user":
            pending += _fill(template.user_format, turn["content"], eos) + template.assistant_header
            segs.append(_Segment(pending, trained=False, ends_user_turn=True))
            pending = ""
        else:
            segs.append(_Segment(turn["content"] + _fill(template.assistant_end, "", eos), trained=True))
            pending = template.turn_sep
    if pending:
        segs.append(_Segment(pending, trained=False))
    return segs


@lru_cache(maxsize=8)
def _compiled(jinja: str) -> Any:
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(jinja)


def _render_jinja(template: Template, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    try:
        return _compiled(template.jinja).render(
            messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
            tools=None, documents=None, **dict(template.jinja_vars),
        )
    except Exception as exc:  # jinja raises many kinds; the template is at fault, not us
        raise TemplateError(f"template 'auto': the tokenizer's chat_template failed: {exc}") from exc


def _auto_segments(template: Template, messages: Sequence[Message], eos: str | None) -> list[_Segment]:
    """Segments of a chat template that we cannot read: render growing prefixes and take the differences."""
    system, turns = _split_system(messages)
    head = [] if system is None else [dict(messages[0])]
    segs: list[_Segment] = []
    done = ""  # text rendered so far (after the last complete assistant turn)
    pending = ""
    ends = [w for w in template.stop_words if w != EOS_PLACEHOLDER] + ([eos] if eos else [])
    for i, turn in enumerate(turns):
        prefix = head + turns[: i + 1]
        if turn["role"] == "user":
            text = _render_jinja(template, prefix, add_generation_prompt=True)
            if not text.startswith(done):
                raise TemplateError("template 'auto': rendering a longer conversation rewrites earlier turns "
                                    "(e.g. it drops past reasoning); pick a named template")
            segs.append(_Segment(pending + text[len(done):], trained=False, ends_user_turn=True))
            pending, done = "", text
        else:
            text = _render_jinja(template, prefix, add_generation_prompt=False)
            if not text.startswith(done):
                raise TemplateError("template 'auto': the generation prompt is not a prefix of the rendered "
                                    "answer; pick a named template")
            answer = text[len(done):]
            start = answer.find(turn["content"])
            search_from = start + len(turn["content"]) if start >= 0 else 0
            cut = len(answer)
            for word in ends:
                at = answer.find(word, search_from)
                if at >= 0:
                    cut = min(cut, at + len(word))
            segs.append(_Segment(answer[:cut], trained=True))
            pending, done = answer[cut:], text
    if pending:
        segs.append(_Segment(pending, trained=False))
    return segs


def _segments(template: Template, messages: Sequence[Message], eos: str | None) -> list[_Segment]:
    if template.jinja is not None:
        return _auto_segments(template, messages, eos)
    return _format_segments(template, messages, eos)


# ----------------------------------------------------------------------------------------------------------------
# tokenization


def _bos_ids(template: Template, tokenizer: Any, first_text: str) -> list[int]:
    bos_id, bos_tok = tokenizer.bos_token_id, tokenizer.bos_token
    if template.bos == "never":
        return []
    if template.bos == "required":
        if bos_id is None:
            raise TemplateError(f"template {template.name!r} starts with BOS but the tokenizer has no bos_token")
        return [bos_id]
    if template.bos == "if_available":
        return [] if bos_id is None else [bos_id]
    # "if_tokenizer_adds" (auto): what tokenizer(text) would do, unless the chat template writes BOS itself.
    if bos_id is None or (bos_tok and first_text.startswith(bos_tok)):
        return []
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos_id] if probe and probe[0] == bos_id else []


def _newline_ids(tokenizer: Any) -> list[int]:
    return tokenizer("\n", add_special_tokens=False)["input_ids"]


def _encode_piece(tokenizer: Any, text: str, first: bool, newline_ids: list[int]) -> list[int]:
    if first:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer("\n" + text, add_special_tokens=False)["input_ids"]
    if newline_ids and ids[: len(newline_ids)] == newline_ids:
        return ids[len(newline_ids):]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _encode_segments(template: Template, tokenizer: Any, segs: list[_Segment]) -> tuple[list[int], list[int]]:
    ids = _bos_ids(template, tokenizer, segs[0].text if segs else "")
    labels = [IGNORE_INDEX] * len(ids)
    newline_ids = _newline_ids(tokenizer)
    for k, seg in enumerate(segs):
        piece = _encode_piece(tokenizer, seg.text, first=(k == 0), newline_ids=newline_ids)
        ids += piece
        labels += piece if seg.trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


def encode_conversation(template: Template, tokenizer: Any, messages: Sequence[Message],
                        max_seq_length: int | None = None) -> dict[str, list[int]]:
    """Training ids and labels of a whole conversation (must end with an assistant answer).

    ``max_seq_length`` keeps the first ``max_seq_length`` tokens (callers decide whether to drop instead;
    see ``sftkit.sft_data``)."""
    try:
        msgs = check_messages(list(messages), need_answer=True)
    except RecordError as exc:
        raise TemplateError(str(exc)) from exc
    ids, labels = _encode_segments(template, tokenizer, _segments(template, msgs, tokenizer.eos_token))
    if max_seq_length is not None:
        ids, labels = ids[:max_seq_length], labels[:max_seq_length]
    return {"input_ids": ids, "labels": labels}


def encode_prompt(template: Template, tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Generation-prompt ids: optional system + turns ending with a user turn, up to the assistant header."""
    try:
        msgs = check_messages(list(messages), need_answer=False)
    except RecordError as exc:
        raise TemplateError(str(exc)) from exc
    if msgs[-1]["role"] != "user":
        raise TemplateError("a prompt must end with a user turn")
    ids, _ = _encode_segments(template, tokenizer, _segments(template, msgs, tokenizer.eos_token))
    return ids


def stop_token_ids(template: Template, tokenizer: Any) -> list[int]:
    """Ids that end an assistant turn: the template's stop words that are single tokens, then the eos id(s)."""
    out: list[int] = []
    unk = tokenizer.unk_token_id
    for word in template.stop_words:
        word = tokenizer.eos_token if word == EOS_PLACEHOLDER else word
        if word is None:
            continue
        tid = tokenizer.convert_tokens_to_ids(word)
        if isinstance(tid, int) and tid != unk and tid not in out:
            out.append(tid)
    eos = tokenizer.eos_token_id
    for tid in eos if isinstance(eos, list) else [eos]:
        if isinstance(tid, int) and tid not in out:
            out.append(tid)
    return out


def render_text(template: Template, messages: Sequence[Message], add_generation_prompt: bool,
                bos_token: str | None = None, eos_token: str | None = None) -> str:
    """The rendering as text (display and debugging). BOS is written only when ``bos_token`` is given and the
    template uses one; ``{eos}`` becomes ``eos_token`` (or the literal ``{eos}`` when it is not given)."""
    msgs = check_messages(list(messages), need_answer=not add_generation_prompt)
    if add_generation_prompt and msgs[-1]["role"] != "user":
        raise TemplateError("add_generation_prompt needs the last turn to be a user turn")
    if template.jinja is not None:
        eos = eos_token or dict(template.jinja_vars).get("eos_token")
    else:
        eos = eos_token or EOS_PLACEHOLDER
    text = "".join(seg.text for seg in _segments(template, msgs, eos))
    if bos_token and template.bos in ("required", "if_available"):
        text = bos_token + text
    return text
