#!/usr/bin/env python
"""Template encoding against whole-string tokenisation (what a server does with the rendered text), and its cost.

For every record and tokenizer: the training ids (`encode_conversation`) and every turn's prompt ids
(`encode_prompt`) are compared with `tokenizer(rendered text)` (BOS written as text), the outside reference; and
encoding all records is timed against one plain `tokenizer(rendered text)` call per record (the floor).

    python bench/bench_templates.py                 # the Firefly sample + the real generated set from ../shared
    python bench/bench_templates.py --records FILE.jsonl --tokenizer MODEL_DIR --template minicpm4
    git show 981ca55:sftkit/model/templates.py > /tmp/old_templates.py      # the piecewise encoding, for comparison
    python bench/bench_templates.py --templates-from /tmp/old_templates.py

Tokenizers: `bpe` (the tiny model's byte-level BPE), `sp-legacy` / `sp` (SentencePiece trained here with
`sentencepiece`, loaded with MiniCPM4's tokenizer_config keys, legacy true / false), or --tokenizer DIR.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftkit.io.jsonl import BadLines  # noqa: E402
from sftkit.model import templates  # noqa: E402
from sftkit.model.sft_data import read_records  # noqa: E402
from sftkit.model.templates import TEMPLATE_NAMES, render_text  # noqa: E402
from sftkit.testing.tiny_model import TOKENIZER_FAMILIES, build_sentencepiece_tokenizer, build_tokenizer  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DEFAULT_RECORDS = (SHARED / "firefly" / "dummy_data.jsonl", SHARED / "hit" / "generated_data.jsonl")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", action="append", default=None,
                   help="JSONL records in any form (repeatable; default: the Firefly sample and the generated set)")
    p.add_argument("--tokenizer", default=None, help="a tokenizer folder instead of the built-in families")
    p.add_argument("--families", default=",".join(TOKENIZER_FAMILIES), help="built-in tokenizers to run")
    p.add_argument("--template", default="minicpm4", choices=TEMPLATE_NAMES)
    p.add_argument("--repeats", type=int, default=3, help="timed passes (the best is kept)")
    p.add_argument("--templates-from", default=None,
                   help="measure another sftkit/model/templates.py (e.g. an older commit's) instead of this one")
    return p.parse_args(argv)


def reference(template, tok, messages, add_generation_prompt: bool) -> list[int]:
    bos = tok.bos_token if template.bos == "required" or (template.bos == "if_available" and tok.bos_token) else ""
    text = render_text(template, messages, add_generation_prompt, eos_token=tok.eos_token)
    return list(tok(bos + text, add_special_tokens=False)["input_ids"])


def load_templates(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("templates_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["templates_under_test"] = module
    spec.loader.exec_module(module)
    return module


def measure(name: str, tok, template_name: str, convs: list[list[dict]], repeats: int, impl=None) -> dict:
    encode_conversation = impl.encode_conversation if impl else templates.encode_conversation
    encode_prompt = impl.encode_prompt if impl else templates.encode_prompt
    template = (impl or templates).get_template(template_name, tok)
    prompts = prompt_diff = train_diff = 0
    for m in convs:
        train_diff += encode_conversation(template, tok, m)["input_ids"] != reference(template, tok, m, False)
        for k in (i for i, x in enumerate(m) if x["role"] == "user"):
            prompts += 1
            prompt_diff += encode_prompt(template, tok, m[: k + 1]) != reference(template, tok, m[: k + 1], True)
    texts = [render_text(template, m, False, eos_token=tok.eos_token) for m in convs]

    def best(fn) -> float:
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    ours = best(lambda: [encode_conversation(template, tok, m) for m in convs])
    plain = best(lambda: [tok(t, add_special_tokens=False) for t in texts])
    tokens = sum(len(encode_conversation(template, tok, m)["input_ids"]) for m in convs)
    return {"tokenizer": name, "conversations": len(convs), "prompts": prompts, "prompts_differing": prompt_diff,
            "training_differing": train_diff, "tokens": tokens, "encode_s": ours, "plain_s": plain}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = args.records or [str(p) for p in DEFAULT_RECORDS if p.is_file()]
    if not paths:
        print("bench_templates: no --records given and none found in ../shared/data", file=sys.stderr)
        return 2
    convs = [r["messages"] for path in paths for r in read_records(path, BadLines())]
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizers = [(args.tokenizer, AutoTokenizer.from_pretrained(args.tokenizer))]
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bench_templates_"))
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        tokenizers = [(f, build_tokenizer() if f == "bpe" else
                       build_sentencepiece_tokenizer(tmp / f, legacy=f == "sp-legacy")) for f in families]
    impl = load_templates(args.templates_from) if args.templates_from else None
    rows = [measure(name, tok, args.template, convs, args.repeats, impl) for name, tok in tokenizers]
    print(f"\n{len(convs)} conversations from {', '.join(paths)}; template {args.template}; encoding of "
          f"{args.templates_from or 'sftkit/model/templates.py'}\n")
    print("| tokenizer | prompts differing from whole-string | training ids differing | tokens | encode s | "
          "plain tokenizer(text) s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokenizer']} | {r['prompts_differing']} of {r['prompts']} | {r['training_differing']} of "
              f"{r['conversations']} | {r['tokens']:,} | {r['encode_s']:.2f} | {r['plain_s']:.2f} | "
              f"{r['encode_s'] / r['plain_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
