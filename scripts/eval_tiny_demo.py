#!/usr/bin/env python
"""The example eval tables of the Evaluate docs, from TINY RANDOM models (figures mean nothing about real models).

    python scripts/eval_tiny_demo.py [--work DIR]

base = a tiny random Llama (sftkit/testing/tiny_model.py), tuned = the same + a LoRA adapter with random non-zero
weights (peft init_lora_weights=False). Two scripted judges on the local test server (127.0.0.1): `chrf` prefers the
answer with the higher character chrF against the record's reference (tie without one), `first` always picks
answer A (pure position bias, which the two-order rule turns into ties). Scripted "human" labels (the answer with
more characters of the reference wins) and a training file holding a near-copy of one prompt show the agreement
and contamination sections. eval.py runs end to end on CPU and the report's tables are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import regex

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftkit.evaluate.stats import chrf_scorer  # noqa: E402
from sftkit.io.cli import ScriptParser, run_script  # noqa: E402
from sftkit.testing.stub_server import Reply, StubServer  # noqa: E402
from sftkit.testing.tiny_model import build_tiny_model  # noqa: E402

QA = [  # (category, question, reference or None)
    ("校园", "图书馆几点开门？", "图书馆早上八点开门，晚上十点闭馆。"),
    ("校园", "宿舍几点熄灯？", "宿舍每天晚上十一点熄灯，请注意作息时间。"),
    ("校园", "食堂在哪里？", "同学们可以在学校的食堂吃饭。"),
    ("校园", "学校的校训是什么？", "校训是规格严格，功夫到家。"),
    ("学习", "选课系统什么时候开放？", "选课系统通常在每学期开学前两周开放，请关注教务处的通知。"),
    ("学习", "什么是自然语言处理？", "自然语言处理研究如何让计算机理解和生成人类语言。"),
    ("学习", "大语言模型怎样学习回答问题？", "大语言模型通过监督微调学习回答问题。"),
    ("学习", "分词器是做什么的？", None),
    ("生活", "今天天气很好，做什么运动？", "可以去操场跑步，每天坚持锻炼半小时。"),
    ("生活", "保险合同是什么？", "保险合同是投保人与保险人约定保险权利义务关系的协议。"),
    ("English", "What is supervised fine-tuning?", "It teaches a language model to follow instructions."),
    ("English", "Where is the Harbin Institute of Technology?", "It is in Harbin, China."),
]
_A = regex.compile(r"\[回答A开始\]\n(.*)\n\[回答A结束\]", regex.S)
_B = regex.compile(r"\[回答B开始\]\n(.*)\n\[回答B结束\]", regex.S)
_REF = regex.compile(r"\[参考答案开始\]\n(.*)\n\[参考答案结束\]", regex.S)


def judge_script(body: dict[str, Any], attempt: int) -> Reply:
    text = body["messages"][1]["content"]
    if body["model"] == "first":
        return Reply.ok('{"reasons": "回答A更好。", "winner": "A"}')
    a, b, ref = _A.search(text).group(1), _B.search(text).group(1), _REF.search(text)
    if ref is None:
        return Reply.ok('{"reasons": "没有参考答案，无法比较。", "winner": "tie"}')
    chrf = chrf_scorer()
    sa, sb = chrf.sentence_score(a, [ref.group(1)]).score, chrf.sentence_score(b, [ref.group(1)]).score
    winner = "A" if sa > sb else "B" if sb > sa else "tie"
    return Reply.ok(orjson.dumps({"reasons": f"chrF A {sa:.1f}, B {sb:.1f}", "winner": winner}).decode())


def human_label(tuned: dict[str, Any], base: dict[str, Any]) -> str:
    ref = tuned.get("reference") or ""
    st, sb = len(set(tuned["response"]) & set(ref)), len(set(base["response"]) & set(ref))
    return "tuned" if st > sb else "base" if sb > st else "tie"


def answer_pairs(out: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(tuned, base) answer rows per prompt from the answer journal, with the record's reference."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for line in (out / "answers.jsonl").read_bytes().splitlines():
        e = orjson.loads(line)
        rows.setdefault(e["rid"], {})[e["side"]] = e
    refs = {f"demo-{i + 1}": ref for i, (_c, _q, ref) in enumerate(QA)}
    return [({**r["tuned"], "id": rid, "reference": refs.get(rid)}, r["base"]) for rid, r in rows.items()
            if "tuned" in r and "base" in r]


def main() -> int:
    ap = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, resumable=False)
    ap.add_argument("--work", default=None, help="folder for the models and outputs (default: a temporary one)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="eval-demo-") as tmp:
        work = Path(args.work or tmp)
        base = build_tiny_model(work / "base", seed=3)
        torch.manual_seed(7)
        lora = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
        get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(work / "adapter")
        val = work / "val.jsonl"
        rows = []
        for i, (cat, q, ref) in enumerate(QA):
            msgs = [{"role": "user", "content": q}] + ([{"role": "assistant", "content": ref}] if ref else [])
            rows.append({"id": f"demo-{i + 1}", "source": "demo-en" if cat == "English" else "demo-zh",
                         "meta": {"category": cat}, "messages": msgs})
        val.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        train = work / "train.jsonl"  # one prompt planted with a changed punctuation mark, one unrelated record
        train.write_bytes(orjson.dumps({"instruction": QA[0][1].replace("？", "?"), "output": "八点。"}) + b"\n"
                          + orjson.dumps({"instruction": "如何写论文摘要？", "output": "先写目的。"}) + b"\n")
        spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
        assert spec and spec.loader
        ev = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ev)
        with StubServer(judge_script) as srv:
            cfg = work / "judges.json"
            cfg.write_bytes(orjson.dumps({"judges": [
                {"name": "chrf", "model": "chrf", "base_url": srv.base_url, "retries": 0},
                {"name": "first", "model": "first", "base_url": srv.base_url, "retries": 0}]}))
            out = work / "out"
            argv = ["--base", base, "--tuned", base, "--adapter", str(work / "adapter"), "--input", str(val),
                    "--judges", str(cfg), "--output-dir", str(out), "--template", "minicpm4", "--base-name",
                    "tiny-random", "--tuned-name", "tiny-random+lora", "--max-new-tokens", str(args.max_new_tokens),
                    "--seed", "42", "--train-file", str(train)]
            rc = ev.main(argv)
            if rc == 0:  # scripted people: the answer sharing more characters with the reference wins
                labels = work / "labels.jsonl"
                labels.write_bytes(b"".join(orjson.dumps({"id": a["id"], "winner": human_label(a, b)}) + b"\n"
                                            for a, b in answer_pairs(out)))
                rc = ev.main([*argv, "--human-labels", str(labels)])
        if rc:
            return rc
        md = (out / "eval_report.md").read_text(encoding="utf-8")
        print("TINY RANDOM MODELS (base: random tiny Llama; tuned: + random LoRA), scripted judges:\n")
        print(md.split("## Worst losses")[0])
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, resumable=False))
