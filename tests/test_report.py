"""report.py over a real small pipeline run: make data (gen_SFT_data.py topics mode -> prep -> convert) and make
distill (slice_docs.py -> gen_SFT_data.py slices mode -> judge.py), every LLM the scripted local server (127.0.0.1).
The numbers in the report are checked against the stats files the stages wrote, in the data model and in the HTML."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

import chatml2conversation
import gen_SFT_data
import prep_sft_firefly_hit
import report
import slice_docs
from scripts import run_pipeline as make_distill
from sftkit.report.build import build
from sftkit.report.load import Inputs, load, token_counter
from sftkit.testing.stub_server import Reply, StubServer

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-REPORT-test-1234"
DIMS = ["accuracy", "completeness", "logicality", "helpfulness", "safety"]
TOPICS = ["新生报到", "图书馆预约", "大创申报"]
ANSWERS = [
    "办理流程分为三步：首先在网上服务大厅填写申请表并上传证件照片，其次到学院办公室由辅导员审核签字，最后凭回执到教务处"
    "领取材料。整个过程一般需要三个工作日，遇到节假日顺延，请提前安排时间。",
    "建议先阅读学校官网发布的通知，确认开放时间与名额限制；然后登录预约系统选择日期和座位，按时签到，超过十五分钟未签到"
    "将被取消并记录一次违约，累计三次违约会暂停预约资格一个月。",
    "申报前要组建三到五人的团队并找到指导老师，撰写项目计划书，说明研究背景、创新点、技术路线和预算，经学院初审后提交学校"
    "评审，立项后按季度提交进展报告，结题时还要完成答辩和成果展示。",
    "宿舍报修可以通过后勤小程序提交，写明楼号、房间号和故障情况并附上照片，维修师傅通常在二十四小时内上门；紧急情况如漏水"
    "漏电请直接拨打值班电话，同时告知宿管阿姨，确保人身和财产安全。",
]
PHONE_ANSWER = ANSWERS[3] + "如有疑问可联系值班老师，手机13812345678，工作日随时接听。"
SCRIPT_TEXT = "<script>alert('x')</script>"


def topic_items(topic: str) -> list[dict[str, str]]:
    """Per topic: two valid items and one with an answer too short to keep. Topic 1's second answer carries a
    mobile number (prep --drop-pii drops it); topic 2's first answer repeats topic 0's (a near duplicate)."""
    t = TOPICS.index(topic)
    outs = [ANSWERS[t] if t < 2 else ANSWERS[0], [ANSWERS[2] + SCRIPT_TEXT, PHONE_ANSWER, ANSWERS[3] + SCRIPT_TEXT][t]]
    items = [{"instruction": f"你是一名熟悉{topic}事务的校园顾问，请为学生提供准确、具体、可执行的建议。",
              "input": f"关于{topic}，第{j + 1}个问题：我应该怎样一步一步处理才稳妥？", "output": o}
             for j, o in enumerate(outs)]
    items.append({"instruction": "你是校园顾问，请回答学生关于校园事务的问题。",
                  "input": f"关于{topic}，一般要多久才能全部办好？需要提前准备什么材料吗？", "output": "好的。"})
    return items


def slice_pair(content: str, idx: int) -> Reply:
    """Slice s, request idx: 1 a good pair, 2 a weak one, 3: slice 0 garbage (no JSON), slice 1 the very same pair
    as 1 (generation drops it), slice 2 a near copy of 1 that judge B cannot score, slice 3 a near copy of 1."""
    material = content.split("【材料】", 1)[1].split("【要求】", 1)[0]
    s = next(i for i, w in enumerate(["奖学金", "宿舍", "选课", "图书馆"]) if w in material)
    facts = ["奖学金评定以学业成绩为主，兼顾综合表现和社会实践", "宿舍每晚十一点熄灯，周末可以延迟到十二点",
             "选课分为预选和正选两轮，正选阶段先到先得", "图书馆工作日早八点开放，晚十点闭馆"]
    answer = f"根据材料，{facts[s]}。请以学校最新通知为准。"
    if idx == 3 and s == 0:
        return Reply.ok("抱歉，这次没有生成 JSON。")
    if idx == 2:
        pair = {"instruction": f"评分五：材料{s}里有哪些不太重要的细节？", "input": "",
                "output": "材料里有一些细节，可以自己去看，这里就不一一展开说明了。"}
    elif idx == 3 and s >= 2:
        pair = {"instruction": f"评分九：请根据材料{s}回答，相关规定是怎样的？" + ("（乙）" if s == 2 else ""),
                "input": "", "output": answer}
    else:
        pair = {"instruction": f"评分九：请根据材料{s}回答，相关规定是怎样的?", "input": "", "output": answer}
    return Reply.ok(orjson.dumps(pair).decode(), usage={"prompt_tokens": 300, "completion_tokens": 60})


def verdict(score: float) -> str:
    return orjson.dumps({"reasons": dict.fromkeys(DIMS, "理由"), "scores": dict.fromkeys(DIMS, score)}).decode()


def script(body: dict[str, Any], attempt: int) -> Reply:
    model = body["model"]
    text = body["messages"][-1]["content"]
    if model == "gen":
        if "请为主题《" in text:
            topic = text.split("请为主题《", 1)[1].split("》", 1)[0]
            return Reply.ok(orjson.dumps(topic_items(topic)).decode(),
                            usage={"prompt_tokens": 500, "completion_tokens": 400, "prompt_cache_hit_tokens": 100})
        return slice_pair(text, int(text.split("（第 ", 1)[1].split("/", 1)[0]))
    prompt = body["messages"][1]["content"]
    if model == "m-b" and "（乙）" in prompt:
        return Reply.ok("我无法给出分数。", usage={"prompt_tokens": 800, "completion_tokens": 10})
    score = 9 if "评分九" in prompt else 5 if model == "m-a" else 6
    if "评分九" in prompt and model == "m-b" and zlib.crc32(prompt.encode()) % 2:
        score = 8
    return Reply.ok(verdict(score), usage={"prompt_tokens": 800, "completion_tokens": 120})


DOC = """# 奖学金

奖学金评定以学业成绩为主，兼顾综合表现和社会实践，每学年评定一次。

# 宿舍

宿舍每晚十一点熄灯，周末可以延迟到十二点，留宿需要提前登记。

# 选课

选课分为预选和正选两轮，正选阶段先到先得，退改选在开学第二周。

# 图书馆

图书馆工作日早八点开放，晚十点闭馆，考试周延长到晚十一点。
"""


def firefly_rows() -> list[bytes]:
    good = [{"conversation": [{"human": f"请介绍一下{w}的基本情况，以及学生应该注意的事项有哪些？",
                               "assistant": a}], "category": "QA"}
            for w, a in zip(["食堂", "校医院", "体育馆", "校车"], ANSWERS, strict=True)]
    good = [{**g, "conversation": [{**g["conversation"][0], "assistant": g["conversation"][0]["assistant"][::-1]}]}
            for g in good]  # reversed: the same characters, other 3-grams than the hit answers
    rows = [orjson.dumps(g) for g in good]
    rows.append(rows[0])  # an exact duplicate
    rows.append(orjson.dumps({"conversation": [{"human": "What is the library opening time on weekends?",
                                                "assistant": "The library opens at eight in the morning and closes "
                                                             "at ten in the evening on weekends and holidays too."}]}))
    email = ANSWERS[1][::-1] + "邮箱 clinic@hit.edu.cn 全天有人值守。"
    rows.append(orjson.dumps({"conversation": [{"human": "我想联系校医院的老师，请问有什么联系方式可以用？",
                                                "assistant": email}]}))
    rows.append(b"{not json")
    return rows


def run_pipeline(root: Path) -> dict[str, Path]:
    """The two chains at the Makefile's default paths under root (the cwd while they run)."""
    (root / "data" / "topics").mkdir(parents=True)
    topics = root / "data" / "topics" / "t.txt"
    topics.write_text("\n".join(TOPICS) + "\n", encoding="utf-8")
    (root / "docs").mkdir()
    (root / "docs" / "handbook.md").write_text(DOC, encoding="utf-8")
    firefly = root / "firefly.jsonl"
    firefly.write_bytes(b"\n".join(firefly_rows()) + b"\n")
    raw = root / "data/raw/hit/generated.jsonl"
    proc = root / "data/processed"
    slices = root / "data/slices/slices.jsonl"
    dist = root / "data/distilled"
    with StubServer(script) as srv:
        common = ["--base-url", srv.base_url, "--api-key", KEY, "--model", "gen", "--max-concurrency", "4",
                  "--log", "WARNING", "--retries", "0"]
        assert gen_SFT_data.main([*common, "--topics-file", str(topics), "--n-per-topic", "3", "--out", str(raw)]) == 0
        assert prep_sft_firefly_hit.main([
            "--hit-jsonl", str(raw), "--firefly-json", str(firefly), "--total", "6", "--hit-ratio", "0.4",
            "--min-chinese-ratio", "0.65", "--drop-pii", "--val-size", "1", "--val-out", str(proc / "val.jsonl"),
            "--domain-out", str(proc / "train_domain.jsonl"), "--out", str(proc / "train_mixed.jsonl"),
            "--workers", "1", "--log", "WARNING"]) == 0
        for a, b in (("train_mixed", "train_firefly"), ("train_domain", "train_domain_firefly"),
                     ("val", "val_firefly")):
            assert chatml2conversation.main(["--in", str(proc / f"{a}.jsonl"), "--out", str(proc / f"{b}.jsonl"),
                                             "--log", "WARNING"]) == 0
        assert slice_docs.main(["--in", str(root / "docs"), "--out", str(slices), "--no-progress",
                                "--log", "WARNING"]) == 0
        cfg = root / "distill.json"  # make distill: scripts/run_pipeline.py (generation, then judge.py)
        cfg.write_bytes(orjson.dumps({
            "generator": {"api_base": srv.base_url, "model": "gen", "max_concurrent": 4},
            "samples_per_slice": 3,
            "judges": [{"name": n, "model": m, "base_url": srv.base_url, "max_concurrency": 4, "retries": 0,
                        "verdict_retries": 0} for n, m in (("A", "m-a"), ("B", "m-b"))],
            "enable_dedup": True, "dedup": {"method": "ngram"}, "min_votes": 2}))
        assert make_distill.main(["--input", str(slices), "--output", str(dist), "--config", str(cfg),
                                  "--api-key", KEY]) == 0
    return {"raw": raw, "proc": proc, "slices": slices, "dist": dist}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipe")
    old = os.getcwd()
    saved = {k: os.environ.pop(k) for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL") if k in os.environ}
    os.chdir(root)
    try:
        run_pipeline(root)
    finally:
        os.chdir(old)
        os.environ.update(saved)
    return root


def inputs_at(root: Path) -> Inputs:
    d = Inputs()
    return Inputs(slices=root / d.slices, gen=root / d.gen, prep=root / d.prep,
                  convert=[root / p for p in d.convert], distill=root / d.distill)


def stats(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def at(obj: Any, dotted: str) -> Any:
    for k in dotted.split("."):
        obj = obj[k]
    return obj


@pytest.fixture(scope="module")
def model(pipeline: Path) -> dict[str, Any]:
    return build(load(inputs_at(pipeline)), k_samples=3)


# ---- the numbers ---------------------------------------------------------------------------------------------


def test_every_funnel_count_is_the_stats_files_number(model: dict[str, Any]) -> None:
    checked = 0
    for f in model["funnels"]:
        assert f["steps"], f"{f['name']} has no steps"
        for s in f["steps"]:
            path, _, key = s["from"].partition(": ")
            if " " in key:  # a difference of two fields, checked below
                continue
            assert s["count"] == at(stats(Path(path)), key), s
            checked += 1
    assert checked >= 20


def test_funnel_drops_and_differences(pipeline: Path, model: dict[str, Any]) -> None:
    g = stats(pipeline / "data/raw/hit/generated.stats.json")
    p = stats(pipeline / "data/processed/train_mixed.stats.json")
    j = stats(pipeline / "data/distilled/metadata.json")
    data = {s["label"]: s for s in model["funnels"][0]["steps"]}
    assert data["valid items (generated records)"]["dropped"] == {"output_too_short": 3} == \
        g["items"]["rejected_by_reason"]
    hit = p["sources"]["hit"]
    assert data["hit: readable"]["count"] == hit["read"] - hit["bad_lines"] == 6
    assert data["hit: passed the filters"]["dropped"] == {"pii: contains phone": 1}
    assert data["hit: after near dedup (usable)"]["dropped"] == {"near duplicate (same source)": 1}
    assert data["hit: after near dedup (usable)"]["count"] == hit["usable"] == 4
    assert data["hit: training pool after the val split"]["count"] == 3 == hit["usable"] - p["output"]["val"]["records"]
    assert data["hit: taken into the mix"]["count"] == p["mix"]["take"]["hit"]
    ff = {s["label"]: s for s in model["funnels"][0]["per_source"]["firefly"]}
    assert ff["firefly: readable"]["dropped"] == {"unreadable line": 1}
    assert ff["firefly: passed the filters"]["dropped"] == {"chinese_ratio: below min ratio": 1,
                                                            "pii: contains email": 1}
    assert ff["firefly: after exact dedup"]["dropped"] == {"exact duplicate (same source)": 1}
    dist = {s["label"]: s for s in model["funnels"][1]["steps"]}
    assert dist["knowledge slices"]["count"] == 4
    assert dist["items returned"]["dropped"] == {"no_json": 1}
    assert dist["valid items (generated records)"]["dropped"] == {"duplicate": 1}
    assert dist["with enough votes"]["dropped"] == {"too few valid verdicts": 1}
    assert dist["passed the judges"]["count"] == j["counts"]["passed_filter"] == 5
    assert dist["passed the judges"]["dropped"] == {"below_threshold": 4}
    assert dist["after near-duplicate removal"]["dropped"] == {"duplicate": j["removed"]["duplicate"]} == \
        {"duplicate": 1}
    assert dist["split: train"]["count"] + dist["split: val"]["count"] == j["counts"]["after_dedup"] == 4


def test_scores_agreement_pii_costs_mix_against_stats(pipeline: Path, model: dict[str, Any]) -> None:
    j = stats(pipeline / "data/distilled/metadata.json")
    sc = model["scores"]
    by = {t["judge"]: t for t in sc["table"]}
    for x in j["judges"]:  # recomputed from scored.jsonl, equal to what judge.py wrote
        assert by[x["name"]]["votes"] == x["votes"]
        assert by[x["name"]]["mean_score"] == pytest.approx(x["mean_score"], abs=1e-4)
    assert by["B"]["statuses"] == {"vote": 9, "failed": 1} and by["A"]["statuses"] == {"vote": 10}
    assert sc["agreement"] == j["agreement"] and sc["agreement"][0]["n"] == 9
    assert len(sc["pairs"][0]["points"]) == 9
    assert sorted(sc["per_dimension"]["A"]["accuracy"]) == [5.0] * 4 + [9.0] * 6
    p = stats(pipeline / "data/processed/train_mixed.stats.json")
    pii = model["dedup_pii"]["pii"]
    assert pii["hit"]["kinds"] == {"phone": {"found": 1, "dropped": 1}}
    assert pii["firefly"]["kinds"] == {"email": {"found": 1, "dropped": 1}}
    assert model["dedup_pii"]["prep"]["near_within"] == p["dedup"]["near_within"] == 1
    assert model["dedup_pii"]["judge"]["removed"] == j["dedup"]["removed"] == 1
    g = stats(pipeline / "data/raw/hit/generated.stats.json")
    cost = {r["stage"]: r for r in model["costs"]}
    assert cost["generate (make data)"]["prompt_tokens"] == g["tokens_total"]["prompt_tokens"] == 1500
    assert cost["generate (make data)"]["cached_tokens"] == 300
    for x in j["judges"]:
        assert cost[f"judge {x['name']}"]["completion_tokens"] == x["tokens_all_runs"]["completion_tokens"]
    m = model["mix"]
    rows = {r["source"]: r for r in m["rows"]}
    for name in p["mix"]["take"]:
        assert rows[name]["take"] == p["mix"]["take"][name] == rows[name]["counted_in_output"]
        assert rows[name]["achieved_share"] == p["mix"]["achieved_shares"][name] == rows[name]["counted_share"]
        assert rows[name]["requested_share"] == p["mix"]["requested_shares"][name]


def test_lengths_before_and_after(pipeline: Path, model: dict[str, Any]) -> None:
    data = model["lengths"][0]["sets"]
    before = next(s for s in data if s["phase"] == "before")
    after = next(s for s in data if s["phase"] == "after")
    gen = [orjson.loads(x) for x in (pipeline / "data/raw/hit/generated.jsonl").read_bytes().splitlines()]
    assert before["chars"]["assistant"] == [len(r["messages"][2]["content"]) for r in gen]
    assert before["summary"]["chars"]["assistant"]["n"] == 6 and after["records"] == 6
    longest = max(len(it["output"]) for t in TOPICS for it in topic_items(t)[:2])
    assert before["summary"]["chars"]["assistant"]["max"] == longest
    kept = model["lengths"][1]["sets"][1]
    assert kept["label"].startswith("kept") and kept["records"] == 4


def test_tokens_counted_with_the_tokenizer(pipeline: Path, tiny_model_dir: str) -> None:
    count = token_counter(tiny_model_dir)
    m = build(load(inputs_at(pipeline)), count, tokenizer=tiny_model_dir)
    before = m["lengths"][0]["sets"][0]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    gen = [orjson.loads(x) for x in (pipeline / "data/raw/hit/generated.jsonl").read_bytes().splitlines()]
    assert before["tokens"]["user"] == [len(tok.encode(r["messages"][1]["content"], add_special_tokens=False))
                                        for r in gen]


# ---- the page ------------------------------------------------------------------------------------------------


class Page(HTMLParser):
    """Tags, attributes, table rows (cell texts) and text of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        if tag not in ("img", "br", "meta"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def render_report(root: Path, out: Path, *extra: str) -> tuple[Page, str]:
    d = Inputs()
    args = ["--slices", str(root / d.slices), "--gen", str(root / d.gen), "--prep", str(root / d.prep),
            "--convert", *[str(root / p) for p in d.convert], "--distill-dir", str(root / d.distill),
            "--out", str(out), *extra]
    assert report.main(args) == 0
    text = out.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    page.close()
    assert page.open == [], "unclosed tags"
    return page, text


def test_html_is_self_contained_and_shows_the_stats_numbers(pipeline: Path, model: dict[str, Any],
                                                            tmp_path: Path) -> None:
    page, text = render_report(pipeline, tmp_path / "r.html")
    links = [(t, a.get("src") or a.get("href")) for t, a in page.tags if a.get("src") or a.get("href")]
    assert all(not v.startswith(("http:", "https:", "//", "file:")) for _, v in links), links
    imgs = [a["src"] for t, a in page.tags if t == "img"]
    assert len(imgs) >= 10
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(t in ("script", "link", "iframe") for t, _ in page.tags)
    assert SCRIPT_TEXT not in text and "&lt;script&gt;" in text  # record text is escaped
    assert sum(a in text for a in ANSWERS) >= 2  # Chinese text exactly as stored
    at_row = 0  # the funnel tables in page order: each step is a later row than the one before
    for f in model["funnels"]:
        for s in f["steps"]:
            at_row = next(i for i in range(at_row, len(page.rows)) if page.rows[i][:1] == [s["label"]])
            assert page.rows[at_row][1] == f"{s['count']:,}", s["label"]
    rows = {r[0]: r for r in page.rows if r}
    j = stats(pipeline / "data/distilled/metadata.json")
    rho = f"{j['agreement'][0]['spearman']:.4f}".rstrip("0").rstrip(".")
    assert rows["A vs B"][1:3] == [str(j["agreement"][0]["n"]), rho]
    body = " ".join(page.text)
    for caption in ("healthy:",):
        assert body.count(caption) >= 10
    saved = orjson.loads((tmp_path / "r.json").read_bytes())
    assert saved["funnels"] == model["funnels"] and saved["mix"] == model["mix"]


def test_stages_not_run_are_shown_not_run(tmp_path: Path) -> None:
    page, text = render_report(tmp_path / "nothing", tmp_path / "r.html")
    assert "not run" in text
    body = " ".join(page.text)
    assert "make data" in body and "make distill" in body
    assert not any(t == "img" for t, _ in page.tags)


def test_only_generation_run(pipeline: Path, tmp_path: Path) -> None:
    root = tmp_path / "partial"
    shutil.copytree(pipeline / "data/raw", root / "data/raw")
    m = build(load(inputs_at(root)))
    assert [s["label"] for s in m["funnels"][0]["steps"]][-1] == "valid items (generated records)"
    assert m["funnels"][0]["stages"] == {"generate": "ok", "prep": "not run", "convert": "not run"}
    assert m["funnels"][1]["steps"] == [] and m["scores"] is None and m["mix"] is None
    render_report(root, tmp_path / "r.html")


def test_old_stats_without_fields_give_notes(pipeline: Path, tmp_path: Path) -> None:
    root = tmp_path / "old"
    shutil.copytree(pipeline / "data", root / "data")
    g = root / "data/raw/hit/generated.stats.json"
    old = stats(g)
    del old["items"], old["tokens_total"]
    g.write_bytes(orjson.dumps(old))
    p = root / "data/processed/train_mixed.stats.json"
    old = stats(p)
    del old["mix"]["achieved_shares"], old["sources"]["firefly"]["usable"]
    p.write_bytes(orjson.dumps(old))
    (root / "data/distilled/metadata.json").write_text("{broken", encoding="utf-8")
    m = build(load(inputs_at(root)))
    notes = "\n".join(m["notes"])
    assert f"{g}: no field items" in notes and f"{g}: no field tokens_total" in notes
    assert "no field mix.achieved_shares" in notes and "no field sources.firefly.usable" in notes
    assert "metadata.json: cannot be read as JSON" in notes
    steps = {s["label"]: s for s in m["funnels"][0]["steps"]}
    assert steps["valid items (generated records)"]["count"] is None
    assert "firefly: records read (prep)" not in [s["label"] for s in m["funnels"][0]["per_source"]["firefly"]]
    _page, text = render_report(root, tmp_path / "r.html")
    assert "no field items" in text and "older version" in text


def test_stats_of_another_shape_cost_their_section_only(pipeline: Path, tmp_path: Path) -> None:
    root = tmp_path / "odd"
    shutil.copytree(pipeline / "data", root / "data")
    p = root / "data/processed/train_mixed.stats.json"
    odd = stats(p)
    odd["sources"] = ["hit", "firefly"]  # a list where a dict was
    odd["mix"]["take"] = "all"
    p.write_bytes(orjson.dumps(odd))
    m = build(load(inputs_at(root)))
    notes = "\n".join(m["notes"])
    assert "the funnel section could not be built" in notes and "the mix section could not be built" in notes
    assert m["scores"]["table"] and m["costs"]  # the other sections are whole
    render_report(root, tmp_path / "r.html")


def test_what_a_format_cannot_carry_is_shown(pipeline: Path, tmp_path: Path) -> None:
    out = tmp_path / "nosys.jsonl"
    assert chatml2conversation.main(["--in", str(pipeline / "data/processed/train_mixed.jsonl"), "--out", str(out),
                                     "--no-system", "--log", "WARNING"]) == 0
    conv = stats(tmp_path / "nosys.stats.json")
    assert conv["not_expressible"] == {"system prompt (--no-system)": 2}  # the hit records carry one
    page, _ = render_report(pipeline, tmp_path / "r.html", "--convert", str(out))
    m = build(load(Inputs(**{**inputs_at(pipeline).__dict__, "convert": [out]})))
    assert m["not_expressible"] == [{"file": str(out), "format": "firefly", "items": conv["not_expressible"]}]
    assert [str(out), "firefly", "system prompt (--no-system): 2"] in page.rows


def test_without_matplotlib_the_tables_stay(pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sftkit.report import plots

    def missing() -> None:
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(plots, "_plt", missing)
    page, text = render_report(pipeline, tmp_path / "r.html")
    assert not any(t == "img" for t, _ in page.tags)
    assert "matplotlib is not installed" in text
    assert any(r[:1] == ["passed the judges"] for r in page.rows)


def test_bad_usage_exit_2(tmp_path: Path) -> None:
    assert report.main(["--samples", "-1", "--out", str(tmp_path / "r.html")]) == 2
    assert report.main(["--tokenizer", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    assert not (tmp_path / "r.html").exists()


def test_cli_help_and_summary(pipeline: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    r = subprocess.run([sys.executable, str(ROOT / "report.py"), "--out", str(out)], cwd=pipeline,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert r.returncode == 0, r.stderr
    assert "make data: generation requests planned (topics) 3" in r.stdout
    assert "make distill: documents found 1" in r.stdout


# ---- rendering in a browser ----------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")
def test_headless_chromium_renders_the_page(pipeline: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    render_report(pipeline, out)
    shot = tmp_path / "shot.png"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
                        out.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-2000:]
    import matplotlib.image

    img = matplotlib.image.imread(str(shot))
    assert img.shape[0] == 2000 and img.shape[1] == 1280
    assert img[:, :, :3].std() > 0.05  # text and figures, not a blank page
