"""Chat templates: the one place where a conversation becomes token ids, for training and inference alike.

A template renders ``[BOS] [system] user_1 header a_1 end sep user_2 header a_2 end sep ...``.

Tokenisation is whole-string: the rendered text (BOS written as its token string, as a chat template served
by vLLM or ``transformers serve`` writes it) is tokenised in one call, exactly as an OpenAI-compatible server
tokenises the text of the chat template saved with the model (``chat_template_jinja``). The prompt for turn k
(``encode_prompt``) is the tokenisation of the text up to turn k's assistant header, and it is checked to be a
prefix of the training ids (``encode_conversation``), so the ids a server feeds the model are the ids it was
trained on. This holds for byte-level BPE and SentencePiece tokenizers alike, legacy or not (a legacy
SentencePiece tokenizer writes a prefix space after every special token; encoding the pieces of a
conversation one by one loses it).

Labels: -100 on BOS, system, user turns and every piece of template framing (the assistant header and the
separator after the end-of-turn text); each assistant turn's content plus its end-of-turn text are trained.
A token that straddled the boundary between a header and an answer would make both impossible at once; no
template here ends its header in a way that lets a tested tokenizer do that, and where some tokenizer does,
the text is cut there (see ``_encode_with_cuts``).

No template injects a default system prompt: what the record carries is what both training and inference see.
"""

from __future__ import annotations

import bisect
import json
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex

from sftkit.io.records import RecordError, check_messages

log = logging.getLogger(__name__)

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
        assistant_header="Assistant:",
        assistant_end=EOS_PLACEHOLDER,
        turn_sep="\n",
        bos="if_available",
        stop_words=(EOS_PLACEHOLDER,),
        # No space after "Assistant:": a header ending in a space is the end of the prompt a server tokenises, but
        # in the training text that space merges into the answer's first token, so the two cannot agree.
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


def _wants_bos(template: Template, tokenizer: Any, first_text: str) -> bool:
    bos_id, bos_tok = tokenizer.bos_token_id, tokenizer.bos_token
    if template.bos == "never":
        return False
    if template.bos == "required":
        if bos_id is None or not bos_tok:
            raise TemplateError(f"template {template.name!r} starts with BOS but the tokenizer has no bos_token")
        return True
    if template.bos == "if_available":
        return bos_id is not None and bool(bos_tok)
    # "if_tokenizer_adds" (auto): what tokenizer(text) would do, unless the chat template writes BOS itself.
    if bos_id is None or not bos_tok or first_text.startswith(bos_tok):
        return False
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(probe) and probe[0] == bos_id


class _Tokenize:
    """Whole-string tokenisation of the rendered text, as a server does with the text of a chat template.

    ``head`` calls tokenise text from the start of the conversation: BOS, when the template has one, is written
    as its token string in front (so a SentencePiece tokenizer sees exactly the text a server renders);
    ``tail`` calls tokenise text that continues a conversation mid-way (only used behind a cut that no
    tokenisation of the whole text respects, see ``_encode_with_cuts``)."""

    def __init__(self, tokenizer: Any, bos: bool) -> None:
        self.tok = tokenizer
        self.bos = bos
        self.added = _added_tokens(tokenizer)
        # A tokenizer that does not read its own BOS string as the BOS token (split_special_tokens) gets the id.
        self.bos_text = tokenizer.bos_token if bos and self.added.bos_is_text else ""
        self.lead = [tokenizer.bos_token_id] if bos and not self.bos_text else []

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [list(x) for x in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def head(self, texts: list[str]) -> list[list[int]]:
        return [[*self.lead, *ids] for ids in self.ids([self.bos_text + t for t in texts])]

    def tail(self, texts: list[str]) -> list[list[int]]:
        # Behind a newline, so SentencePiece adds no start-of-text prefix space; the newline's ids are removed.
        newline = self.added.newline
        n = len(newline)
        out = []
        for text, ids in zip(texts, self.ids(["\n" + t for t in texts]), strict=True):
            out.append(ids[n:] if n and ids[:n] == newline else self.ids([text])[0])
        return out


@dataclass(frozen=True)
class _Added:
    """What encoding needs to know of a tokenizer, worked out once per tokenizer."""

    key: tuple[Any, ...]
    pattern: Any  # finds the added tokens in text, longest first; None when there are none
    by_text: dict[str, int]
    ids: frozenset[int]
    bos_is_text: bool  # tokenising the BOS string gives the BOS id
    newline: list[int]


_ADDED: weakref.WeakKeyDictionary[Any, _Added] = weakref.WeakKeyDictionary()


def _added_tokens(tokenizer: Any) -> _Added:
    """The tokenizer's added tokens (special ones included), cached per tokenizer until their number changes."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    key = (len(added), tokenizer.bos_token, tokenizer.bos_token_id)
    cached = _ADDED.get(tokenizer)
    if cached is None or cached.key != key:
        by_text = {str(getattr(t, "content", t)): int(i) for i, t in added.items()}
        words = sorted((w for w in by_text if w), key=len, reverse=True)
        pattern = regex.compile("|".join(regex.escape(w) for w in words)) if words else None
        bos, newline = tokenizer([tokenizer.bos_token or "", "\n"], add_special_tokens=False)["input_ids"]
        cached = _Added(key, pattern, by_text, frozenset(by_text.values()),
                        tokenizer.bos_token_id is not None and list(bos) == [tokenizer.bos_token_id], list(newline))
        _ADDED[tokenizer] = cached
    return cached


def _encode_anchored(enc: _Tokenize, text: str, cuts: list[int]) -> tuple[list[int], list[int]] | None:
    """The fast path of ``_encode_with_cuts``: one whole-string call, plus short checks near each cut.

    Tokenizers split their input at added tokens (``<|im_start|>``, ``<|im_end|>``, BOS ...) before anything
    else and tokenise the stretches between them independently, so the tokenisation of ``text[:cut]`` is the
    whole-string ids up to the last added token before the cut, followed by the tokenisation of the text from
    that added token to the cut; only that short text is tokenised again. A cut next to an added token needs
    no check. The added tokens found in the text must be the added ids found in the whole-string ids, one for
    one, or this path gives up (None) and the caller checks against the whole text instead."""
    added = enc.added
    source = enc.bos_text + text
    shift, lead = len(enc.bos_text), len(enc.lead)
    (full,) = enc.head([text])
    spans = [(m.start(), m.end(), added.by_text[m.group()]) for m in added.pattern.finditer(source)] \
        if added.pattern else []
    at_ids = [i for i, t in enumerate(full) if t in added.ids]
    if len(at_ids) != len(spans) or any(full[i] != sp[2] for i, sp in zip(at_ids, spans, strict=True)):
        return None
    starts = [sp[0] for sp in spans]
    found: dict[int, int] = {}
    checks: list[tuple[int, int, int]] = []  # cut number, where its stretch starts in the text and in the ids
    for k, cut in enumerate(cuts):
        c = cut + shift
        q = bisect.bisect_right(starts, c) - 1  # the last added token starting at or before the cut
        if q >= 0 and spans[q][1] == c:
            found[k] = at_ids[q] + 1
        elif q >= 0 and spans[q][0] == c:
            found[k] = at_ids[q]
        else:
            checks.append((k, spans[q][0], at_ids[q]) if q >= 0 else (k, 0, lead))
    if checks:
        local = enc.ids([source[a:cuts[k] + shift] for k, a, _ in checks])
        for (k, _, base), before in zip(checks, local, strict=True):
            if full[base:base + len(before)] != before:
                return None  # a token of the whole text straddles the cut
            found[k] = base + len(before)
    return full, [found[k] for k in range(len(cuts))]


def _encode_with_cuts(enc: _Tokenize, text: str, cuts: list[int], head: bool = True) -> tuple[list[int], list[int]]:
    """Ids of ``text`` and, for each cut (a character offset), the number of ids before it.

    The ids are the whole-string tokenisation of ``text`` whenever every cut falls between two of its tokens,
    i.e. when the tokenisation of ``text[:cut]`` is a prefix of that of ``text`` (checked, not assumed). A cut
    that some token straddles (e.g. an answer starting with a character the tokenizer merges with the end of
    the assistant header) splits the text there: the part before it is tokenised whole, so the prompt ids a
    server sends stay a prefix of the training ids, and the rest is tokenised on its own."""
    if head and (fast := _encode_anchored(enc, text, cuts)) is not None:
        return fast
    encode = enc.head if head else enc.tail
    full, *prefixes = encode([text, *(text[:c] for c in cuts)])
    bad = next((k for k, ids in enumerate(prefixes) if full[: len(ids)] != ids), None)
    if bad is None:
        return full, [len(ids) for ids in prefixes]
    k, cut = bad, cuts[bad]
    left, left_at = _encode_with_cuts(enc, text[:cut], cuts[:k], head)
    right, right_at = _encode_with_cuts(enc, text[cut:], [c - cut for c in cuts[k + 1:]], head=False)
    return left + right, [*left_at, len(left), *(len(left) + n for n in right_at)]


def _encode_segments(template: Template, tokenizer: Any, segs: list[_Segment]) -> tuple[list[int], list[int]]:
    text = "".join(seg.text for seg in segs)
    enc = _Tokenize(tokenizer, _wants_bos(template, tokenizer, text))
    ends, pos = [], 0
    for seg in segs[:-1]:
        pos += len(seg.text)
        ends.append(pos)
    ids, at = _encode_with_cuts(enc, text, ends)
    bounds = [0, *at, len(ids)]
    labels: list[int] = []
    for k, seg in enumerate(segs):  # BOS lies in the first segment, which is never trained
        piece = ids[bounds[k]:bounds[k + 1]]
        labels += piece if seg.trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


def encode_conversation(template: Template, tokenizer: Any, messages: Sequence[Message],
                        max_seq_length: int | None = None) -> dict[str, list[int]]:
    """Training ids and labels of a whole conversation (must end with an assistant answer).

    ``max_seq_length`` keeps the first ``max_seq_length`` tokens (callers decide whether to drop instead;
    see ``sftkit.model.sft_data``)."""
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


# ----------------------------------------------------------------------------------------------------------------
# serving: the chat template and stop tokens written beside a trained or merged model


def _jinja_literal(text: str) -> str:
    """``text`` as a jinja string expression (jinja reads Python-style escapes)."""
    out = []
    for ch in text:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif not (" " <= ch <= "~"):
            out.append(f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return "{{ '" + "".join(out) + "' }}"


def _jinja_format(fmt: str) -> str:
    """A ``*_format`` string as jinja: ``{content}`` is the message's content, ``{eos}`` the eos token."""
    out = []
    for k, part in enumerate(fmt.split("{content}")):
        if k:
            out.append("{{ message['content'] }}")
        for j, piece in enumerate(part.split(EOS_PLACEHOLDER)):
            if j:
                out.append("{{ eos_token }}")
            if piece:
                out.append(_jinja_literal(piece))
    return "".join(out)


def chat_template_jinja(template: Template, tokenizer: Any) -> str:
    """A jinja chat template that renders exactly what this template trains on, BOS written as text.

    Servers (vLLM, SGLang, ``transformers serve``) render the chat template and tokenise the text without adding
    special tokens, so BOS must be in the text: tokenising ``apply_chat_template(messages, add_generation_prompt=
    True)`` gives ``encode_prompt``'s ids, and a conversation ending with an answer gives ``encode_conversation``'s.
    For ``auto`` it is the tokenizer's own template, with BOS put in front when training adds one it lacks."""
    if template.jinja is not None:
        probe = _render_jinja(template, [{"role": "user", "content": "x"}], add_generation_prompt=True)
        if _wants_bos(template, tokenizer, probe):
            return "{{ bos_token }}" + template.jinja
        return template.jinja
    bos = {"required": "{{ bos_token }}", "if_available": "{% if bos_token %}{{ bos_token }}{% endif %}"}
    system = (_jinja_format(template.system_format) if template.system_format is not None
              else "{{ raise_exception('this template has no system turn') }}")
    return (
        bos.get(template.bos, "")
        + "{% for message in messages %}"
        + "{% if message['role'] == 'system' %}" + system
        + "{% elif message['role'] == 'user' %}" + _jinja_format(template.user_format)
        + "{% if not loop.last or add_generation_prompt %}" + _jinja_literal(template.assistant_header)
        + "{% endif %}"
        + "{% elif message['role'] == 'assistant' %}{{ message['content'] }}"
        + _jinja_format(template.assistant_end) + _jinja_literal(template.turn_sep)
        + "{% endif %}{% endfor %}"
    ).replace("{{ '' }}", "")


def serving_eos_ids(template: Template, tokenizer: Any, eos: int | list[int] | None = None) -> list[int]:
    """The eos ids a generation_config should carry: its own ones, then the template's stop tokens."""
    current = [eos] if isinstance(eos, int) else list(eos or [])
    return list(dict.fromkeys([*(int(t) for t in current), *stop_token_ids(template, tokenizer)]))


def save_chat_files(out_dir: str | Path, template: Template, tokenizer: Any, base_model: str | None = None,
                    trust_remote_code: bool = False) -> dict[str, Any]:
    """Write the tokenizer with ``chat_template_jinja`` and a generation_config whose eos ids include the
    template's stop tokens into ``out_dir`` (a trained model, an adapter, a merged model), so any
    OpenAI-compatible server started on it tokenises prompts as training did and stops where answers end.

    The generation_config already in ``out_dir`` (else ``base_model``'s, else a new one) is updated, not replaced.
    The saved tokenizer is loaded back and must tokenise a conversation as ``tokenizer`` does: a SentencePiece
    ``LlamaTokenizer`` with ``legacy: true`` loses that key in ``save_pretrained`` (transformers 5) and reloads
    as non-legacy, so the key is written back. Any other difference is logged as an error (the weights are saved
    by then; failing the run would lose nothing but its summary) and returned as ``roundtrip_ok: False``."""
    from transformers import AutoTokenizer, GenerationConfig

    out = Path(out_dir)
    jinja = chat_template_jinja(template, tokenizer)
    previous = tokenizer.chat_template
    tokenizer.chat_template = jinja
    try:
        tokenizer.save_pretrained(out)
    finally:
        tokenizer.chat_template = previous
    config_path = out / "tokenizer_config.json"
    legacy = getattr(tokenizer, "legacy", None)
    if isinstance(legacy, bool) and config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("legacy") != legacy:
            config["legacy"] = legacy
            config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    probe = [{"role": "user", "content": "你好 hi"}, {"role": "assistant", "content": "好的。 Yes"},
             {"role": "user", "content": "再见 bye"}]
    reloaded = AutoTokenizer.from_pretrained(out, trust_remote_code=trust_remote_code)
    roundtrip_ok = encode_prompt(template, reloaded, probe) == encode_prompt(template, tokenizer, probe)
    if not roundtrip_ok:
        log.error("%s: the saved tokenizer tokenises differently from the one training used: a server started "
                  "on this folder will not see the training ids", out)

    try:
        gen = GenerationConfig.from_pretrained(out)
    except OSError:
        try:
            gen = GenerationConfig.from_pretrained(base_model) if base_model else GenerationConfig()
        except OSError:
            gen = GenerationConfig()
    gen.eos_token_id = serving_eos_ids(template, tokenizer, gen.eos_token_id)
    if gen.bos_token_id is None and tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    gen.save_pretrained(out)
    return {"chat_template": jinja, "eos_token_id": gen.eos_token_id, "roundtrip_ok": roundtrip_ok}
