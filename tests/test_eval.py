"""eval.py end to end on CPU: two tiny models (a random Llama and the same + a random LoRA adapter), judges on the
scripted local server (127.0.0.1), both orders, failing judges, resume, dry-run counts, bad inputs; the figures
(bootstrap interval, chrF, Fleiss' kappa, refusals) against plain reference computations."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import regex

from sftkit.evaluate import pairwise as pw
from sftkit.evaluate import stats
from sftkit.testing.stub_server import Reply, StubServer
from sftkit.testing.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
assert _spec and _spec.loader
eval_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_script)

_A = regex.compile(r"\[回答A开始\]\n(.*)\n\[回答A结束\]", regex.S)
_B = regex.compile(r"\[回答B开始\]\n(.*)\n\[回答B结束\]", regex.S)
MAX_NEW = 12

RECORDS = [
    {"id": "q1", "source": "hit", "meta": {"category": "校园"},
     "messages": [{"role": "user", "content": "图书馆几点开门？"},
                  {"role": "assistant", "content": "图书馆早上八点开门。"}]},
    {"id": "q2", "source": "hit", "meta": {"category": "校园"},
     "messages": [{"role": "user", "content": "宿舍几点熄灯？"},
                  {"role": "assistant", "content": "宿舍晚上十一点熄灯。"}]},
    {"id": "q3", "source": "hit", "meta": {"category": "学习"},
     "messages": [{"role": "user", "content": "选课系统什么时候开放？"}]},
    {"id": "q4", "source": "firefly", "meta": {"category": "学习"},
     "messages": [{"role": "user", "content": "什么是自然语言处理？"},
                  {"role": "assistant", "content": "自然语言处理研究如何让计算机理解和生成人类语言。"}]},
    {"id": "q5", "source": "firefly",
     "messages": [{"role": "user", "content": "What is supervised fine-tuning?"},
                  {"role": "assistant", "content": "It teaches a language model to follow instructions."}]},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(base model folder, LoRA adapter folder): the adapter's weights random and non-zero, so answers differ."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("eval_models")
    base = build_tiny_model(root / "base", seed=3)
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    return base, str(adapter)


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DASHSCOPE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def write_inputs(tmp: Path, base_url: str, judges: list[dict[str, Any]]) -> tuple[Path, Path]:
    val = tmp / "val.jsonl"
    val.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in RECORDS))
    cfg = tmp / "judges.json"
    cfg.write_bytes(orjson.dumps({"judges": [{"base_url": base_url, "retries": 0, "max_concurrency": 4,
                                              "verdict_retries": 0, **j} for j in judges]}))
    return val, cfg


def answers_by_side(out: Path) -> dict[str, set[str]]:
    sides: dict[str, set[str]] = {"base": set(), "tuned": set()}
    for line in (out / "answers.jsonl").read_bytes().splitlines():
        e = orjson.loads(line)
        sides[e["side"]].add(e["response"])
    return sides


def verdict(winner: str) -> str:
    return orjson.dumps({"reasons": "先比较准确性与完整性。", "winner": winner}).decode()


def scripted(out: Path) -> Any:
    """m-pref prefers the tuned model's answer (found in the answer journal); m-first always picks A; m-bad
    never gives a usable verdict."""
    def script(body: dict[str, Any], attempt: int) -> Reply:
        model = body["model"]
        if model == "m-first":
            return Reply.ok(verdict("A"))
        if model == "m-bad":
            return Reply.ok("这两个回答都还可以。")
        text = body["messages"][1]["content"]
        a, b = _A.search(text).group(1), _B.search(text).group(1)
        tuned = answers_by_side(out)["tuned"]
        if a == b:
            return Reply.ok(verdict("tie"))
        return Reply.ok(verdict("A" if a in tuned else "B" if b in tuned else "tie"))
    return script


def run_eval(models: tuple[str, str], val: Path, cfg: Path, out: Path, *extra: str) -> int:
    base, adapter = models
    return eval_script.main(["--base", base, "--tuned", base, "--adapter", adapter, "--input", str(val),
                             "--judges", str(cfg), "--output-dir", str(out), "--template", "minicpm4",
                             "--max-new-tokens", str(MAX_NEW), "--seed", "5", *extra])


def test_end_to_end_tuned_wins_first_picker_ties_bad_judge_no_vote_and_resume(models, tmp_path, capsys):
    out = tmp_path / "out"
    with StubServer(scripted(out)) as srv:
        val, cfg = write_inputs(tmp_path, srv.base_url, [{"name": "pref", "model": "m-pref"},
                                                        {"name": "first", "model": "m-first"},
                                                        {"name": "bad", "model": "m-bad"}])
        assert run_eval(models, val, cfg, out) == 0
        sent = len(srv.requests)
        assert sent == len(RECORDS) * 3 * 2  # prompts x judges x both orders
        rep = orjson.loads((out / "eval_report.json").read_bytes())
        # the answers differ for every prompt (the adapter changes the model)
        rows = [orjson.loads(x) for x in (out / "answers.jsonl").read_bytes().splitlines()]
        assert len(rows) == 2 * len(RECORDS)
        by = {(r["side"], r["rid"]): r["response"] for r in rows}
        assert all(by[("base", r["id"])] != by[("tuned", r["id"])] for r in RECORDS)
        # both orders asked of every judge: half of the requests show the tuned answer first
        firsts = [_A.search(b["messages"][1]["content"]).group(1) for b in srv.requests if b["model"] == "m-pref"]
        assert sum(a in answers_by_side(out)["tuned"] for a in firsts) == len(RECORDS)
        pj = rep["per_judge"]
        assert (pj["pref"]["win"], pj["pref"]["tie"], pj["pref"]["loss"]) == (len(RECORDS), 0, 0)
        assert (pj["first"]["win"], pj["first"]["tie"], pj["first"]["loss"]) == (0, len(RECORDS), 0)
        assert pj["bad"]["n"] == 0 and pj["bad"]["failed"] == len(RECORDS) and pj["bad"]["vote"] == 0
        # outcome = sign of the mean vote of the voting judges (pref +1, first 0; bad gives none): all wins
        o = rep["overall"]
        assert (o["n"], o["win"], o["tie"], o["loss"], o["win_rate"], o["net"]) == (5, 5, 0, 0, 1.0, 1.0)
        assert o["win_rate_ci95"] == [1.0, 1.0]
        assert set(rep["per_category"]) == {"校园", "学习", "(none)"}
        assert rep["per_category"]["校园"]["win"] == 2 and rep["per_source"]["firefly"]["n"] == 2
        assert rep["agreement"]["pairs"][0] == {"judges": ["pref", "first"], "n": 5, "agree": 0.0}
        assert rep["agreement"]["fleiss_n"] == 0  # the bad judge voted on nothing
        # judge-free figures: chrF over the 4 records with a reference, as sacrebleu computes it
        refs = [r["messages"][-1]["content"] for r in RECORDS if r["messages"][-1]["role"] == "assistant"]
        hyps = [by[("tuned", r["id"])] for r in RECORDS if r["messages"][-1]["role"] == "assistant"]
        from sacrebleu.metrics import CHRF
        expect = round(CHRF(char_order=6, word_order=0).corpus_score(hyps, [refs]).score, 2)
        assert rep["answers"]["tuned"]["chrf"] == {**rep["answers"]["tuned"]["chrf"], "n": 4, "corpus": expect}
        length = sum(r["finish_reason"] == "length" for r in rows if r["side"] == "base") / len(RECORDS)
        assert rep["answers"]["base"]["hit_max_new_tokens_rate"] == round(length, 4)
        md = (out / "eval_report.md").read_text(encoding="utf-8")
        assert "| all | 5 | 5 | 0 | 0 | 1.00 [1.00, 1.00] |" in md
        assert "None: the base model won no prompt." in md
        # the reference is shown to the judge when the record has one, and reasons come before the verdict
        shown = [b["messages"][1]["content"] for b in srv.requests]
        assert sum("[参考答案开始]\n图书馆早上八点开门。" in s for s in shown) == 6
        assert all(s.index("reasons") < s.index("winner") for s in shown)

        # resume: nothing generated, only the failed verdicts asked again with --retry-failed
        capsys.readouterr()
        assert run_eval(models, val, cfg, out) == 0
        assert len(srv.requests) == sent
        assert "answers generated this run: base 0, tuned 0; judge requests this run: 0" in capsys.readouterr().out
        assert run_eval(models, val, cfg, out, "--dry-run") == 0
        dry = capsys.readouterr().out
        assert "answers to generate: 0 (base 0, tuned 0) of 10" in dry and "judge requests: 30 = 5" in dry
        assert "judge requests not yet journaled: 0" in dry
        assert len((out / "answers.jsonl").read_bytes().splitlines()) == 2 * len(RECORDS)
        assert run_eval(models, val, cfg, out, "--retry-failed") == 0
        assert [b["model"] for b in srv.requests[sent:]] == ["m-bad"] * (2 * len(RECORDS))


def test_worst_losses_quoted_when_base_wins(models, tmp_path):
    out = tmp_path / "out"

    def prefer_base(body: dict[str, Any], attempt: int) -> Reply:
        text = body["messages"][1]["content"]
        a = _A.search(text).group(1)
        return Reply.ok(verdict("B" if a in answers_by_side(out)["tuned"] else "A"))

    with StubServer(prefer_base) as srv:
        val, cfg = write_inputs(tmp_path, srv.base_url, [{"name": "j", "model": "m"}])
        assert run_eval(models, val, cfg, out) == 0
    rep = orjson.loads((out / "eval_report.json").read_bytes())
    assert rep["overall"]["loss"] == 5 and rep["overall"]["net"] == -1.0
    assert [w["id"] for w in rep["worst_losses"]] == ["q1", "q2", "q3", "q4", "q5"]
    md = (out / "eval_report.md").read_text(encoding="utf-8")
    assert "### q1 (votes: j loss)" in md and "> 图书馆几点开门？" in md


def test_dry_run_counts_and_sends_nothing(models, tmp_path, capsys):
    with StubServer(lambda b, a: Reply.ok(verdict("A"))) as srv:
        val, cfg = write_inputs(tmp_path, srv.base_url, [{"name": "a", "model": "deepseek-chat"},
                                                        {"name": "b", "model": "m-b"}])
        assert run_eval(models, val, cfg, tmp_path / "out", "--dry-run") == 0
        assert srv.requests == []
    text = capsys.readouterr().out
    assert "answers to generate: 10 (base 5, tuned 5) of 10" in text
    assert "judge requests: 20 = 5 prompts x 2 judges x 2 orders" in text
    assert "total requests: 30" in text
    assert "estimated cost: unknown (a judge has no price)" in text
    assert regex.search(r"judge a \(deepseek-chat\): 10 requests, .* <= \$\d", text)
    assert not (tmp_path / "out").exists()


def test_bad_inputs_exit_2_with_one_line(models, tmp_path, capsys):
    val, cfg = write_inputs(tmp_path, "http://127.0.0.1:9/v1", [{"name": "a", "model": "m"}])
    assert run_eval(models, tmp_path / "missing.jsonl", cfg, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.jsonl: no such file" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    assert run_eval(models, val, bad, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not valid JSON" in err
    bad.write_text('{"judges": [{"name": "x", "model": "m", "base_url": "https://api.example.com/v1"}]}')
    assert run_eval(models, val, bad, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no API key" in err
    assert not (tmp_path / "o").exists()


def test_without_sacrebleu_exit_2_before_anything_is_generated(models, tmp_path, capsys, monkeypatch):
    val, cfg = write_inputs(tmp_path, "http://127.0.0.1:9/v1", [{"name": "a", "model": "m"}])
    real = eval_script.importlib.util.find_spec
    monkeypatch.setattr(eval_script.importlib.util, "find_spec",
                        lambda name, *a: None if name == "sacrebleu" else real(name, *a))
    assert run_eval(models, val, cfg, tmp_path / "o") == 2
    assert "needs sacrebleu" in capsys.readouterr().err
    assert not (tmp_path / "o" / "answers.jsonl").exists()


# ---- the pure parts -------------------------------------------------------------------------------------------


def test_order_combination_counts_a_flip_as_tie():
    assert pw.tuned_side("tb", "A") == "tuned" and pw.tuned_side("bt", "A") == "base"
    assert pw.tuned_side("tb", "B") == "base" and pw.tuned_side("bt", "B") == "tuned"
    assert pw.combine_orders("tuned", "tuned") == "win"
    assert pw.combine_orders("base", "base") == "loss"
    assert pw.combine_orders("tuned", "base") == "tie"  # always picks one position
    assert pw.combine_orders("tuned", "tie") == "tie"
    assert pw.parse_winner('好的 {"reasons": "理由", "winner": "b"}') == ("B", "理由")
    with pytest.raises(ValueError):
        pw.parse_winner('{"reasons": "理由", "winner": "C"}')


def test_bootstrap_matches_a_plain_seeded_loop():
    values = [1.0] * 7 + [0.0] * 3 + [-1.0] * 2
    rng = np.random.default_rng(11)
    means = []
    for _ in range(500):
        sample = rng.integers(0, len(values), size=len(values))
        means.append(sum(values[i] for i in sample) / len(values))
    expect = (round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4))
    assert stats.bootstrap_ci(values, resamples=500, seed=11) == expect
    assert expect[0] < 5 / 12 < expect[1]
    assert stats.bootstrap_ci([1.0] * 4, seed=3) == (1.0, 1.0)
    assert stats.bootstrap_ci([]) is None
    w = stats.win_tie_loss(["win", "win", "tie", "loss"], seed=0)
    assert (w["win_rate"], w["net"]) == (0.5, 0.25)


def test_chrf_is_sacrebleus_character_chrf():
    from sacrebleu.metrics import CHRF

    hyp, ref = "图书馆早上八点开门", "图书馆每天早上八点开门。"
    direct = CHRF(char_order=6, word_order=0)
    got = stats.chrf_figures([hyp], [ref])
    assert got["corpus"] == round(direct.corpus_score([hyp], [[ref]]).score, 2)
    assert got["mean_sentence"] == round(direct.sentence_score(hyp, [ref]).score, 2)
    assert stats.chrf_figures([ref], [ref])["corpus"] == 100.0
    assert 0 < got["corpus"] < 100


def test_fleiss_kappa_on_the_textbook_example():
    # Fleiss (1971) as worked on Wikipedia's "Fleiss' kappa" page: 10 subjects, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert round(stats.fleiss_kappa(table), 3) == 0.210
    # two raters, hand-checked: agree on 3 of 4; p_win 3/8, p_tie 3/8, p_loss 2/8 -> pe 22/64, po 3/4
    votes = [{"a": "win", "b": "win"}, {"a": "tie", "b": "tie"}, {"a": "loss", "b": "loss"}, {"a": "win", "b": "tie"}]
    ag = stats.judge_agreement(votes, ["a", "b"])
    assert ag["pairs"] == [{"judges": ["a", "b"], "n": 4, "agree": 0.75}]
    assert ag["fleiss_kappa"] == round((0.75 - 22 / 64) / (1 - 22 / 64), 4)


def test_refusal_phrases():
    assert stats.is_refusal("抱歉，我无法回答这个问题。")
    assert stats.is_refusal("I’m sorry, but I can't help with that.")
    assert not stats.is_refusal("图书馆早上八点开门。")
    assert not stats.is_refusal("图书馆早上八点开门。" * 30 + "抱歉")  # past the window


def test_a_dead_judge_gives_no_vote_and_the_others_go_on(models, tmp_path):
    out = tmp_path / "out"
    pref = scripted(out)

    def script(body: dict[str, Any], attempt: int) -> Reply:
        return Reply.error(500) if body["model"] == "m-down" else pref(body, attempt)

    with StubServer(script) as srv:
        down = {"name": "down", "model": "m-down", "breaker_failures": 2, "breaker_window": 0.5, "max_concurrency": 1}
        val, cfg = write_inputs(tmp_path, srv.base_url, [{"name": "pref", "model": "m-pref"}, down])
        assert run_eval(models, val, cfg, out) == 0
        dead = sum(b["model"] == "m-down" for b in srv.requests)
    rep = orjson.loads((out / "eval_report.json").read_bytes())
    assert rep["per_judge"]["down"]["vote"] == 0
    assert rep["per_judge"]["down"]["failed"] + rep["per_judge"]["down"]["missing"] == len(RECORDS)
    assert dead < 2 * len(RECORDS)  # the circuit breaker stopped sending to it
    assert (rep["overall"]["n"], rep["overall"]["win"]) == (len(RECORDS), len(RECORDS))


def test_make_eval(models, tmp_path):
    import os
    import subprocess
    import sys

    base, adapter = models
    out = tmp_path / "out"
    with StubServer(scripted(out)) as srv:
        val, cfg = write_inputs(tmp_path, srv.base_url, [{"name": "pref", "model": "m-pref"}])
        # -o: the venv stamp counts as up to date (the test runs in the venv it would build)
        r = subprocess.run(["make", "-s", "-C", str(ROOT), "-o", ".venv/.stamp", "eval", f"PYTHON={sys.executable}",
                            f"EVAL_BASE={base}", f"EVAL_TUNED={base}", f"EVAL_ADAPTER={adapter}", f"EVAL_INPUT={val}",
                            f"EVAL_JUDGES={cfg}", f"EVAL_OUT={out}",
                            f"EVAL_FLAGS=--max-new-tokens {MAX_NEW} --template minicpm4"],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tuned vs base: win 5, tie 0, loss 0" in r.stdout
    assert (out / "eval_report.md").is_file()
