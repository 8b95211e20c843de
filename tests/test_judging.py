"""sftkit.distill.judging: config merge and key resolution, prompts, verdict parsing, decisions, agreement, export."""

from __future__ import annotations

import math
import random

import pytest

from sftkit.distill import judging as jg

DIMS = jg.dimensions_from_config({"dimensions": jg.DEFAULT_DIMENSIONS})
NAMES = [d.name for d in DIMS]
SCALE = (1.0, 10.0)


def rules(**kw) -> jg.Rules:
    base = {"threshold": 7.0, "min_votes": 2, "floors": {}, "floor_rule": "mean", "scale": SCALE}
    return jg.Rules(**{**base, **kw})


# ---- config -----------------------------------------------------------------------------------------------


def test_seed_evaluators_dict_deep_merges_and_keeps_both_judges() -> None:
    cfg = jg.normalise_config({"evaluators": {"primary": {"api_key": "k1"}, "secondary": {"api_key": "k2"}},
                               "min_score_threshold": 7.5, "output_dir": "./x"})
    assert [(j["name"], j["model"], j["base_url"], j["api_key"]) for j in cfg["judges"]] == [
        ("primary", "Moonshot-Kimi-K2-Instruct", jg.DASHSCOPE, "k1"),
        ("secondary", "deepseek-v3.2-exp", jg.DASHSCOPE, "k2")]
    assert cfg["min_score_threshold"] == 7.5 and cfg["min_votes"] == 2 and cfg["train_val_split"] == 0.9
    assert [d["name"] for d in cfg["dimensions"]] == NAMES
    # seed key names inside an evaluator: api_base / max_concurrent
    cfg = jg.normalise_config({"evaluators": {"primary": {"api_base": "http://127.0.0.1:9/v1", "max_concurrent": 9}}})
    primary = cfg["judges"][0]
    assert primary["base_url"] == "http://127.0.0.1:9/v1" and primary["max_concurrency"] == 9
    assert len(cfg["judges"]) == 2 and primary["model"] == "Moonshot-Kimi-K2-Instruct"


def test_judges_list_merges_by_name_and_says_which_judges_run() -> None:
    cfg = jg.normalise_config({"judges": [{"name": "secondary", "api_key": "k"}, {"name": "extra", "model": "m",
                                                                                 "base_url": "http://x/v1"}]})
    assert [(j["name"], j.get("model")) for j in cfg["judges"]] == [("secondary", "deepseek-v3.2-exp"),
                                                                     ("extra", "m")]
    assert cfg["judges"][0]["base_url"] == jg.DASHSCOPE
    with pytest.raises(jg.ConfigError):
        jg.normalise_config({"judges": [{"model": "no-name"}]})
    with pytest.raises(jg.ConfigError):
        jg.normalise_config({"evaluators": [{"name": "a"}]})


def test_dedup_block_merges_deeply() -> None:
    cfg = jg.normalise_config({"dedup": {"ngram": {"n": 2}}})
    assert cfg["dedup"]["ngram"] == {"tokenizer": "char", "n": 2, "threshold": 0.7, "num_perm": 128, "bands": 32}
    assert cfg["dedup"]["threshold"] == 0.92


def test_key_precedence_flag_env_dotenv_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("J_KEY", raising=False)
    cfg = jg.normalise_config({"judges": [{"name": "a", "model": "m", "base_url": "https://a.example/v1",
                                           "api_key_env": "J_KEY", "api_key": "from-config"}]})

    def key(**kw) -> str:
        return jg.judges_from_config(cfg, **kw)[0].api_key

    assert key() == "from-config"
    assert key(env_file={"J_KEY": "from-dotenv"}) == "from-dotenv"
    monkeypatch.setenv("J_KEY", "from-env")
    assert key(env_file={"J_KEY": "from-dotenv"}) == "from-env"
    assert key(flag_key="from-flag") == "from-flag"
    assert key(flag_key="from-flag", judge_keys={"a": "from-judge-flag"}) == "from-judge-flag"
    spec = jg.judges_from_config(cfg)[0]
    assert "from-env" not in repr(spec) and "api_key" not in spec.public()


def test_missing_key_remote_vs_local_and_base_url_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    remote = jg.normalise_config({"judges": [{"name": "a", "model": "m", "base_url": "https://a.example/v1"}]})
    with pytest.raises(jg.ConfigError, match=r"judge 'a'.*no API key.*OPENAI_API_KEY"):
        jg.judges_from_config(remote)
    assert jg.judges_from_config(remote, need_keys=False)[0].api_key == ""
    local = jg.normalise_config({"judges": [{"name": "a", "model": "m", "base_url": "http://127.0.0.1:8000/v1"}]})
    assert jg.judges_from_config(local)[0].base_url == "http://127.0.0.1:8000/v1"
    no_url = jg.normalise_config({"judges": [{"name": "a", "model": "m"}]})
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8001/v1")
    assert jg.judges_from_config(no_url)[0].base_url == "http://localhost:8001/v1"
    assert jg.judges_from_config(remote, flag_base_url="http://127.0.0.1:1/v1")[0].base_url == "http://127.0.0.1:1/v1"


def test_judge_config_errors() -> None:
    two = jg.normalise_config({"judges": [{"name": "a", "model": "m", "base_url": "http://127.0.0.1/v1"},
                                          {"name": "b", "model": "m", "base_url": "http://127.0.0.1/v1"}]})
    with pytest.raises(jg.ConfigError, match="unknown judge"):
        jg.judges_from_config(two, only=["c"])
    assert [j.name for j in jg.judges_from_config(two, only=["b"])] == ["b"]
    dup = {"judges": [{"name": "a", "model": "m", "base_url": "http://127.0.0.1/v1"}] * 2}
    with pytest.raises(jg.ConfigError, match="share a name"):
        jg.judges_from_config(dup)
    bad = jg.normalise_config({"judges": [{"name": "a", "model": "m", "base_url": "http://127.0.0.1/v1",
                                           "weight": 0}]})
    with pytest.raises(jg.ConfigError):
        jg.judges_from_config(bad)
    with pytest.raises(jg.ConfigError, match="weight"):
        jg.dimensions_from_config({"dimensions": [{"name": "x", "weight": -1}]})
    with pytest.raises(jg.ConfigError, match="unknown dimension"):
        jg.rules_from_config({**jg.DEFAULTS, "floors": {"honesty": 5}}, DIMS)
    with pytest.raises(jg.ConfigError, match="scale"):
        jg.rules_from_config({**jg.DEFAULTS, "scale": [10, 1]}, DIMS)


def test_public_config_and_hash_drop_keys() -> None:
    a = jg.normalise_config({"judges": [{"name": "primary", "api_key": "sk-1"}], "dedup": {"api": {"api_key": "e"}}})
    b = jg.normalise_config({"judges": [{"name": "primary", "api_key": "sk-2"}]})
    assert "sk-1" not in str(jg.public_config(a)) and "'api_key'" not in str(jg.public_config(a))
    assert jg.config_hash(a) == jg.config_hash(b)
    assert jg.config_hash(a) != jg.config_hash({**b, "min_votes": 1})


# ---- prompts ------------------------------------------------------------------------------------------------


def rec(**meta) -> dict:
    return {"id": "x", "messages": [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "问题一"},
                                    {"role": "assistant", "content": "回答一\n第二行"},
                                    {"role": "user", "content": "追问"}, {"role": "assistant", "content": "回答二"}],
            "meta": meta}


def test_prompt_shows_whole_conversation_rubric_and_json_shape() -> None:
    msgs = jg.build_judge_messages(rec(), DIMS, SCALE)
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    for text in ("[系统设定]\n你是助手", "[用户]\n问题一", "[助手]\n回答一\n第二行", "[用户]\n追问", "[助手]\n回答二"):
        assert text in user
    for d in DIMS:
        assert f"- {d.name}（{d.aliases[0]}）：{d.rubric}" in user
    assert "1 到 10" in user and "【参考材料】" not in user
    shape = user[user.index('{"reasons"'):]
    assert shape.index('"reasons"') < shape.index('"scores"') and '"safety": <1-10>' in shape
    # The shape the prompt asks for parses as a valid verdict once filled in.
    filled = shape.replace("<1-10>", "7").replace('"..."', '"ok"')
    assert jg.parse_verdict(filled, DIMS, SCALE).scores == dict.fromkeys(NAMES, 7.0)


def test_slice_lookup_full_excerpt_and_truncation() -> None:
    r = rec(slice_id="s1", slice_excerpt="摘录")
    assert jg.slice_text_for(r, {"s1": "全文"}, 100) == ("全文", "full")
    assert jg.slice_text_for(r, {}, 100) == ("摘录", "excerpt")
    assert jg.slice_text_for(r, {"s1": "长" * 50}, 10) == ("长" * 10, "full_truncated")
    assert jg.slice_text_for(rec(), {"s1": "全文"}, 100) == (None, "")
    user = jg.build_judge_messages(r, DIMS, SCALE, "全文材料", "full")[1]["content"]
    assert "【参考材料】" in user and "全文材料" in user and user.index("全文材料") < user.index("【样本】")


def test_prompt_hash_covers_model_and_messages() -> None:
    m1 = jg.build_judge_messages(rec(), DIMS, SCALE)
    m2 = jg.build_judge_messages(rec(), DIMS[:4], SCALE)
    assert jg.prompt_hash("a", m1) == jg.prompt_hash("a", jg.build_judge_messages(rec(), DIMS, SCALE))
    assert len({jg.prompt_hash("a", m1), jg.prompt_hash("b", m1), jg.prompt_hash("a", m2)}) == 3


def test_retry_messages_show_the_bad_reply_and_the_reason() -> None:
    base = jg.build_judge_messages(rec(), DIMS, SCALE)
    again = jg.retry_messages(base, "坏的输出", "out_of_range: safety=11", DIMS, SCALE)
    assert again[:2] == base and again[2] == {"role": "assistant", "content": "坏的输出"}
    assert "out_of_range: safety=11" in again[3]["content"] and again[3]["role"] == "user"


# ---- verdicts --------------------------------------------------------------------------------------------------


def full(v) -> dict:
    return dict.fromkeys(NAMES, v)


@pytest.mark.parametrize("text, expected", [
    ('{"reasons": {"accuracy": "对"}, "scores": {"accuracy": 8, "completeness": 7, "logicality": 6, '
     '"helpfulness": 9, "safety": 10}}', {"accuracy": 8, "completeness": 7, "logicality": 6, "helpfulness": 9,
                                          "safety": 10}),
    ('```json\n{"scores": {"accuracy": "8", "completeness": "7.5", "logicality": " 6 ", "helpfulness": "9/10", '
     '"safety": "10分"}}\n```', {"accuracy": 8, "completeness": 7.5, "logicality": 6, "helpfulness": 9,
                                  "safety": 10}),
    ('评审结果如下：{"Accuracy": 8, "COMPLETENESS": 8, "logicality": 8, "helpfulness": 8, "safety": 8, '
     '"overall": 1} 谢谢', full(8)),
    ('{"准确性": 5, "完整性": 5, "逻辑性": 5, "有用性": 5, "安全性": 5}', full(5)),
    ('{"accuracy": {"score": 9, "reason": "准确"}, "completeness": {"score": "9"}, "logicality": 9, '
     '"helpfulness": 9, "safety": 9}', full(9)),
    ('{"scores": {"accuracy": 1, "completeness": 10, "logicality": 1.0, "helpfulness": 10.0, "safety": 5}}',
     {"accuracy": 1, "completeness": 10, "logicality": 1, "helpfulness": 10, "safety": 5}),
])
def test_parse_verdict_accepts(text: str, expected: dict) -> None:
    v = jg.parse_verdict(text, DIMS, SCALE)
    assert v.scores == {k: float(x) for k, x in expected.items()}


def test_parse_verdict_keeps_reasons() -> None:
    v = jg.parse_verdict('{"reasons": {"accuracy": "与材料一致"}, "scores": {"accuracy": 9, "completeness": 9, '
                         '"logicality": 9, "helpfulness": {"score": 9, "reason": "实用"}, "safety": 9}}', DIMS, SCALE)
    assert v.reasons == {"accuracy": "与材料一致", "helpfulness": "实用"}


@pytest.mark.parametrize("text, reason", [
    ("", "no_json"),
    ("这个回答很好，9 分", "no_json"),
    ("[8, 8, 8, 8, 8]", "not_object"),
    ('{"scores": {"accuracy": 8, "completeness": 8, "logicality": 8, "helpfulness": 8}}', "missing"),
    ('{"scores": {"accuracy": 11, "completeness": 8, "logicality": 8, "helpfulness": 8, "safety": 8}}',
     "out_of_range"),
    ('{"scores": {"accuracy": 0, "completeness": 8, "logicality": 8, "helpfulness": 8, "safety": 8}}',
     "out_of_range"),
    ('{"scores": {"accuracy": -3, "completeness": 8, "logicality": 8, "helpfulness": 8, "safety": 8}}',
     "out_of_range"),
    ('{"scores": {"accuracy": "高", "completeness": 8, "logicality": 8, "helpfulness": 8, "safety": 8}}',
     "not_a_number"),
    ('{"scores": {"accuracy": "4/5", "completeness": 8, "logicality": 8, "helpfulness": 8, "safety": 8}}',
     "not_a_number"),
    ('{"scores": {"accuracy": true, "completeness": 8, "logicality": 8, "helpfulness": 8, "safety": 8}}',
     "not_a_number"),
    ('{"scores": {"accuracy": null, "completeness": 8, "logicality": 8, "helpfulness": 8, "safety": 8}}',
     "missing"),
])
def test_parse_verdict_rejects(text: str, reason: str) -> None:
    with pytest.raises(jg.VerdictError) as e:
        jg.parse_verdict(text, DIMS, SCALE)
    assert e.value.reason == reason


# ---- decisions ------------------------------------------------------------------------------------------------


def test_decide_weights_threshold_floors() -> None:
    w = {"a": 1.0, "b": 1.0}
    d = jg.decide({"a": full(8), "b": full(6)}, w, DIMS, rules())
    assert (d.votes, d.score, d.passed, d.fail_reasons) == (2, 7.0, True, [])
    # judge weights: a counts three times as much as b
    d = jg.decide({"a": full(8), "b": full(4)}, {"a": 3.0, "b": 1.0}, DIMS, rules())
    assert d.score == 7.0 and d.passed
    # dimension weights
    dims = jg.dimensions_from_config({"dimensions": [{"name": "accuracy", "weight": 4}, {"name": "safety"}]})
    d = jg.decide({"a": {"accuracy": 9, "safety": 1}, "b": {"accuracy": 9, "safety": 1}}, w, dims, rules())
    assert d.score == pytest.approx(7.4) and d.passed
    # a sum that lands just under the threshold in floating point still passes
    d = jg.decide({"a": full(6.9), "b": full(7.1)}, w, DIMS, rules())
    assert d.passed
    # too few votes, and no votes at all (never a zero score)
    d = jg.decide({"a": full(9)}, w, DIMS, rules())
    assert d.fail_reasons == ["too_few_votes"] and d.score == 9.0
    d = jg.decide({}, w, DIMS, rules())
    assert (d.votes, d.score, d.passed, d.fail_reasons) == (0, None, False, ["no_votes"])


def test_floor_rules_mean_and_min() -> None:
    w = {"a": 1.0, "b": 1.0}
    votes = {"a": {**full(9), "safety": 4}, "b": {**full(9), "safety": 9}}
    assert jg.decide(votes, w, DIMS, rules(floors={"safety": 6})).passed  # mean 6.5
    d = jg.decide(votes, w, DIMS, rules(floors={"safety": 6}, floor_rule="min"))
    assert d.fail_reasons == ["floor:safety"]
    d = jg.decide(votes, w, DIMS, rules(floors={"safety": 7, "accuracy": 9}))
    assert d.fail_reasons == ["floor:safety"]


# ---- agreement ------------------------------------------------------------------------------------------------


def test_spearman_known_values() -> None:
    assert jg.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert jg.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert jg.spearman([1, 2], [1, 1]) is None and jg.spearman([1], [2]) is None
    rng = random.Random(3)
    x = rng.sample(range(100), 12)
    y = rng.sample(range(100), 12)
    rank = {v: i for i, v in enumerate(sorted(x))}
    ranky = {v: i for i, v in enumerate(sorted(y))}
    d2 = sum((rank[a] - ranky[b]) ** 2 for a, b in zip(x, y, strict=True))
    assert jg.spearman(x, y) == pytest.approx(1 - 6 * d2 / (12 * (144 - 1)))  # textbook formula, no ties
    # ties take their average rank: [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]
    assert jg.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_cohen_kappa_known_values() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> po 0.7, pe 0.5, kappa 0.4
    a = [True] * 25 + [False] * 25
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    assert jg.cohen_kappa(a, b) == pytest.approx(0.4)
    assert jg.cohen_kappa([True, False], [True, False]) == pytest.approx(1.0)
    assert jg.cohen_kappa([True, True], [True, True]) is None  # chance agreement 1: undefined
    assert jg.cohen_kappa([], []) is None


def test_agreement_per_pair_over_shared_votes() -> None:
    votes = [{"a": full(9), "b": full(8), "c": full(3)}, {"a": full(5), "b": full(6)}, {"a": full(7), "c": full(8)},
             {"b": full(2), "c": full(2)}]
    out = jg.agreement(votes, ["a", "b", "c"], DIMS, rules())
    assert [(x["judges"], x["n"]) for x in out] == [(["a", "b"], 2), (["a", "c"], 2), (["b", "c"], 2)]
    ab = out[0]
    assert ab["spearman"] == 1.0 and ab["cohen_kappa"] == 1.0 and ab["pass_agreement"] == 1.0
    ac = out[1]
    assert ac["spearman"] == -1.0 and ac["pass_agreement"] == 0.5


# ---- export ------------------------------------------------------------------------------------------------------


def test_export_sharegpt_keeps_system_and_turns() -> None:
    row = jg.export_row(rec(), "sharegpt", 1, 8.123456, {"a": full(8.0)})
    assert row["conversations"][0] == {"from": "system", "value": "你是助手"}
    assert [t["from"] for t in row["conversations"]] == ["system", "human", "gpt", "human", "gpt"]
    assert row["avg_score"] == 8.1235 and row["dimension_scores"] == {"a": full(8.0)} and row["id"] == "x"
    alp = jg.export_row(rec(), "alpaca", 1, 8.0, {})
    assert alp["history"] == [["问题一", "回答一\n第二行"]] and alp["instruction"] == "追问"
    with pytest.raises(ValueError):
        jg.export_row(rec(), "xml", 1, 8.0, {})


def test_dedup_text_all_or_prompt() -> None:
    assert jg.dedup_text(rec(), "all") == "问题一\n回答一\n第二行\n追问\n回答二"
    assert jg.dedup_text(rec(), "prompt") == "问题一\n追问"
