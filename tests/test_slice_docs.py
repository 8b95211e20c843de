"""slice_docs.py and sftkit/docs: formats, encodings, structure-aware splitting, nothing lost, bad files, PDF page
furniture, stable ids, flags, and `make distill DOCS=` end to end against the scripted local server.

Fixtures are written by the libraries made for each format (python-docx, reportlab, Python's codecs); the
references are what the fixtures were built from (the exact sentences, rows and headings), the tokenizer's own
whole-string counts, and charset codecs, never our own reader."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

import slice_docs
from sftkit.docs.readers import read_markdown
from sftkit.docs.split import Limits, SplitCounts, coverage, split_document
from sftkit.testing.doc_samples import paragraph, sentence, wrap, write_docx, write_pdf
from sftkit.testing.stub_server import Reply, StubServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing a test writes lands in the repository


def run_slice(tmp_path: Path, *args: str, out: str = "out/slices.jsonl") -> tuple[int, list[dict[str, Any]], dict]:
    rc = slice_docs.main(["--in", *args, "--out", str(tmp_path / out), "--no-progress"]
                         if "--dry-run" not in args else ["--in", *args, "--no-progress"])
    path = tmp_path / out
    rows = [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []
    stats_path = path.with_name(path.name[:-6] + ".stats.json")
    stats = orjson.loads(stats_path.read_bytes()) if stats_path.exists() else {}
    return rc, rows, stats


def nonblank(s: str) -> str:
    return regex.sub(r"\s+", "", s)


# ---- Markdown: exact output, heading paths, tables, code -----------------------------------------------------

HANDBOOK_MD = """# 学生手册

## 第一章 总则

学生证遗失后，应在七个工作日内到学院办公室申请补办。补办需要一寸照片一张，工本费二十元。

## 第二章 收费

| 项目 | 费用 |
|---|---|
| 学生证 | 二十元 |
| 校徽 | 十元 |

### 2.1 说明

他说：“请尽快办理。”然后离开了。

```python
print("不要拆开我")
```
"""


def test_markdown_exact_slices(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "手册.md").write_text(HANDBOOK_MD, encoding="utf-8")
    rc, rows, stats = run_slice(tmp_path, str(tmp_path / "d"), "--min-chars", "0")
    assert rc == 0
    got = [(r["content"], r["metadata"]["headings"], r["metadata"]["kinds"]) for r in rows]
    assert got == [
        ("# 学生手册\n\n## 第一章 总则\n\n"
         "学生证遗失后，应在七个工作日内到学院办公室申请补办。补办需要一寸照片一张，工本费二十元。",
         ["学生手册", "第一章 总则"], ["paragraph"]),
        ("## 第二章 收费\n\n| 项目 | 费用 |\n|---|---|\n| 学生证 | 二十元 |\n| 校徽 | 十元 |",
         ["学生手册", "第二章 收费"], ["table"]),
        ("### 2.1 说明\n\n他说：“请尽快办理。”然后离开了。\n\n```python\nprint(\"不要拆开我\")\n```",
         ["学生手册", "第二章 收费", "2.1 说明"], ["code", "paragraph"]),
    ]
    text = HANDBOOK_MD
    for r in rows:  # offsets index the file's text exactly
        m = r["metadata"]
        assert text[m["char_start"]:m["char_end"]] == r["content"]
        assert m["source"] == (tmp_path / "d" / "手册.md").as_posix() and m["format"] == "md"
    assert stats["chars"]["coverage"] == 1.0 and stats["slices"]["count"] == 3
    assert stats["chars"]["nonblank_extracted"] == len(nonblank(HANDBOOK_MD))


def test_small_limit_never_cuts_a_sentence_and_keeps_closing_quotes(tmp_path: Path) -> None:
    rnd = random.Random(7)
    sentences = [sentence(rnd) for _ in range(120)]
    paras = [sentences[i:i + 8] for i in range(0, len(sentences), 8)]
    md = "# 总则\n\n" + "\n\n".join("".join(p) for p in paras) + "\n"
    longest = max(map(len, sentences))
    for max_chars in (longest, 80, 150, 400):
        doc = read_markdown(md.encode(), "x.md")
        counts = SplitCounts()
        slices = split_document(doc, Limits(max_chars), counts)
        assert counts.cuts_inside_sentence == 0
        # reference: the sentences the document was built from, in order; every slice is whole sentences
        flat = list(sentences)
        pos = 0
        for s in slices:
            assert len(s.content) <= max_chars
            body = s.content.removeprefix("# 总则").strip()
            pieces = []
            rest = nonblank(body)
            while rest:
                assert rest.startswith(flat[pos]), (rest[:30], flat[pos])
                rest = rest[len(flat[pos]):]
                pieces.append(flat[pos])
                pos += 1
            assert pieces
        assert pos == len(flat)
        assert slices[0].content.startswith("# 总则\n\n")  # the heading opens the first slice, never ends one
        assert all(not s.content.rstrip().endswith("# 总则") for s in slices)


def test_over_long_sentence_is_cut_at_clauses_and_counted() -> None:
    clauses = [f"第{i}项规定适用于全体在校学生" for i in range(30)]
    long_sentence = "，".join(clauses) + "。"
    md = f"短句在前。{long_sentence}短句在后。\n"
    doc = read_markdown(md.encode(), "x.md")
    counts = SplitCounts()
    slices = split_document(doc, Limits(100), counts)
    assert all(len(s.content) <= 100 for s in slices)
    assert counts.cuts_inside_sentence == len(slices) - 2  # every boundary inside the long sentence, no other
    assert "".join(s.content for s in slices) == md.strip()
    inner = [s.content for s in slices if s.content not in ("短句在前。", "短句在后。")]
    assert all(c.endswith("，") or c.endswith("。") for c in inner)  # cut after a clause mark, never mid-word


def test_long_table_split_by_rows_with_header_repeated() -> None:
    rows = [f"| 宿舍楼{i:02d} | {i * 3} 人 | 每月{i}日检查 |" for i in range(40)]
    header = "| 楼栋 | 人数 | 检查安排 |\n|---|---|---|"
    md = "## 宿舍\n\n" + header + "\n" + "\n".join(rows) + "\n\n之后的段落。\n"
    doc = read_markdown(md.encode(), "x.md")
    counts = SplitCounts()
    slices = split_document(doc, Limits(300), counts)
    table_slices = [s for s in slices if "table" in s.kinds]
    assert counts.tables_split == 1 and len(table_slices) > 2
    seen = []
    for s in table_slices:
        assert len(s.content) <= 300
        lines = s.content.split("\n")
        start = lines.index("| 楼栋 | 人数 | 检查安排 |")  # every piece carries the header
        assert lines[start + 1] == "|---|---|---|"
        seen += [ln for ln in lines[start + 2:] if ln.startswith("| 宿舍楼")]
    assert seen == rows  # each row exactly once, in order, never cut


def test_small_table_and_code_block_stay_whole() -> None:
    code = "```\n" + "\n".join(f"line_{i} = {i}  # 说明。" for i in range(12)) + "\n```"
    md = "前文。\n\n" + code + "\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n后文。\n"
    doc = read_markdown(md.encode(), "x.md")
    slices = split_document(doc, Limits(len(code) + 10), SplitCounts())
    assert any(s.content.strip() == code or code in s.content for s in slices)
    assert any("| a | b |\n|---|---|\n| 1 | 2 |" in s.content for s in slices)


_MD_BLOCK = st.one_of(
    st.builds(lambda lv, t: "#" * lv + " " + t, st.integers(1, 4), st.text("标题章节一二三", min_size=1, max_size=8)),
    st.builds(lambda ss: "".join(ss), st.lists(st.sampled_from(
        ["学生证遗失后应及时补办。", "他说：“好的！”", "请问何时开放？", "考试周延长……", "English text here. ",
         "（括号里的话。）", "无标点的一长串文字" * 5]), min_size=1, max_size=12)),
    st.builds(lambda n: "| 列一 | 列二 |\n|---|---|\n" + "\n".join(f"| 值{i} | 数{i} |" for i in range(n)),
              st.integers(1, 30)),
    st.builds(lambda n: "\n".join(f"- 条目{i}：内容说明。" for i in range(n)), st.integers(1, 15)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_MD_BLOCK, min_size=1, max_size=14), st.integers(40, 400), st.integers(0, 60),
       st.integers(0, 30))
def test_property_nothing_lost_and_limits_hold(blocks: list[str], max_chars: int, overlap: int,
                                               min_chars: int) -> None:
    md = "\n\n".join(blocks) + "\n"
    doc = read_markdown(md.encode(), "p.md")
    counts = SplitCounts()
    slices = split_document(doc, Limits(max_chars, min_chars=min_chars, overlap=min(overlap, max_chars - 1)),
                            counts)
    total, covered = coverage(doc, slices)
    assert total == len(nonblank(md))
    assert covered + counts.dropped_short_chars >= total  # every non-blank character is in a slice or counted
    # independent of `coverage`: a mask of the offsets the slices claim, checked against their contents
    mask = bytearray(len(md))
    for s in slices:
        assert len(s.content) <= max_chars or any(u.heading for u in s.units)  # only a huge heading may exceed
        if all(u.text is None for u in s.units):
            assert s.content == md[s.start:s.end]
        for u in s.units:
            mask[u.start:u.end] = b"\x01" * (u.end - u.start)
    missing = sum(1 for i, ch in enumerate(md) if not ch.isspace() and not mask[i])
    assert missing <= counts.dropped_short_chars
    if min_chars == 0:
        assert missing == 0


# ---- encodings -----------------------------------------------------------------------------------------------

SIMPLIFIED = "第一章 总则\n\n学生证遗失后，应在七个工作日内到学院办公室申请补办。补办需要一寸照片一张，工本费二十元。\n"
TRADITIONAL = ("第一章 總則\n\n學生證遺失後，應在七個工作日內到學院辦公室申請補辦。"
               "補辦需要一寸照片一張，工本費二十元。\n")


@pytest.mark.parametrize(("encoding", "text"), [
    ("utf-8", SIMPLIFIED), ("utf-8-sig", SIMPLIFIED), ("gb18030", SIMPLIFIED), ("gbk", SIMPLIFIED),
    ("gb2312", SIMPLIFIED), ("big5", TRADITIONAL), ("utf-16", SIMPLIFIED), ("gb18030", SIMPLIFIED + "𠀀㐀龥€"),
])
def test_text_encodings_are_detected_and_every_character_kept(tmp_path: Path, encoding: str, text: str) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "doc.txt").write_bytes(text.replace("\n", "\r\n").encode(encoding))
    rc, rows, stats = run_slice(tmp_path, str(tmp_path / "d"), "--min-chars", "0")
    assert rc == 0
    assert nonblank("".join(r["content"] for r in rows)) == nonblank(text)
    assert rows[0]["metadata"]["headings"] == [text.split("\n")[0]]
    decoded_as = {"gbk": "gb18030", "gb2312": "gb18030", "big5": "cp950"}.get(encoding, encoding)
    assert stats["files"]["encodings"] == {decoded_as: 1}


def test_short_chinese_texts_in_legacy_encodings_decode_exactly() -> None:
    """Short files are where detectors guess wrong (charset-normalizer missed 94 of 300 such samples, see
    bench_slice.py); the reference is Python's own codec."""
    from sftkit.docs.readers import decode_text

    rnd = random.Random(3)
    to_traditional = str.maketrans("学证馆办补费书图号时后间", "學證館辦補費書圖號時後間")
    for i in range(90):
        text = "".join(sentence(rnd) for _ in range(1 + i % 4))[: 10 + (i * 7) % 120]
        enc = ("gb18030", "gbk", "big5")[i % 3]
        if enc == "big5":
            text = "".join(ch for ch in text.translate(to_traditional) if ch.encode("big5", errors="ignore"))
        assert decode_text(text.encode(enc))[0] == text, (enc, text)


# ---- DOCX ----------------------------------------------------------------------------------------------------


def test_docx_headings_lists_tables(tmp_path: Path) -> None:
    rnd = random.Random(11)
    p1, p2 = "".join(paragraph(rnd, 3)), "".join(paragraph(rnd, 3))
    rows = [("项目", "费用", "备注"), ("学生证", "二十元", "现金"), ("校徽", "十元", "")]
    write_docx(tmp_path / "d" / "手册.docx", [
        ("title", "学生手册"), ("h1", "第一章 总则"), ("p", p1), ("bullet", "携带身份证原件"), ("number", "携带照片"),
        ("h2", "一、收费"), ("table", rows), ("outline2", "二、自定义样式的标题"), ("p", p2)])
    rc, out, stats = run_slice(tmp_path, str(tmp_path / "d"), "--min-chars", "0", "--max-chars", "400")
    assert rc == 0 and stats["files"]["by_format"] == {"docx": 1}
    by_heading = {tuple(r["metadata"]["headings"]): r for r in out}
    assert set(by_heading) == {("学生手册", "第一章 总则"), ("学生手册", "第一章 总则", "一、收费"),
                               ("学生手册", "第一章 总则", "二、自定义样式的标题")}
    first = by_heading[("学生手册", "第一章 总则")]
    assert first["content"] == f"学生手册\n\n第一章 总则\n\n{p1}\n\n携带身份证原件\n携带照片"
    assert first["metadata"]["kinds"] == ["list", "paragraph"]
    table = by_heading[("学生手册", "第一章 总则", "一、收费")]
    assert table["content"] == "一、收费\n\n| 项目 | 费用 | 备注 |\n| 学生证 | 二十元 | 现金 |\n| 校徽 | 十元 |  |"
    assert by_heading[("学生手册", "第一章 总则", "二、自定义样式的标题")]["content"].endswith(p2)
    assert stats["chars"]["coverage"] == 1.0


# ---- PDF -----------------------------------------------------------------------------------------------------


def test_pdf_pages_furniture_scanned_and_empty_pages(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rnd = random.Random(5)
    paras = [paragraph(rnd, 7) for _ in range(6)]
    pages: list[list[str] | str] = [
        ["第一章 总则", *wrap(paras[0], 38), *wrap(paras[1], 38)],
        wrap(paras[2], 38),
        "image",
        "",
        ["第二章 图书馆", *wrap(paras[3], 38)],
        wrap(paras[4], 38) + wrap(paras[5], 38),
    ]
    write_pdf(tmp_path / "d" / "handbook.pdf", pages, header="某某大学学生手册（2026 版）")
    rc, rows, stats = run_slice(tmp_path, str(tmp_path / "d"), "--max-chars", "300", "--min-chars", "0")
    assert rc == 0
    assert stats["pages"] == {"total": 6, "empty": 1, "scanned": 1,
                              "listed": [{"file": (tmp_path / "d" / "handbook.pdf").as_posix(), "scanned": [3],
                                          "empty": [4]}]}
    assert "1 scanned (image-only) page(s) without text, OCR needed: 3" in caplog.text
    # the header (4 text pages) and the page numbers are gone from every slice, and counted
    assert stats["removed"]["lines"] == {"header_footer": 4, "page_number": 4}
    joined = "".join(r["content"] for r in rows)
    assert "学生手册（2026 版）" not in joined and "页" not in joined
    # every sentence the PDF was written from is in a slice, whole (lines were joined back into paragraphs)
    for p in paras:
        for s in p:
            assert any(s in r["content"] for r in rows), s
    assert stats["chars"]["coverage"] == 1.0
    for r in rows:
        m = r["metadata"]
        expect = {p for p, para in zip([1, 1, 2, 5, 6, 6], paras, strict=True) if para[0] in r["content"]}
        assert expect <= set(m["pages"]), (m["pages"], r["content"][:30])
        assert m["headings"] in (["第一章 总则"], ["第二章 图书馆"])


def test_pdf_paragraph_across_a_page_break_is_one_paragraph(tmp_path: Path) -> None:
    rnd = random.Random(9)
    para = paragraph(rnd, 12)
    lines = wrap(para, 30)
    write_pdf(tmp_path / "d" / "x.pdf", [lines[:3], lines[3:]])
    rc, rows, _ = run_slice(tmp_path, str(tmp_path / "d"), "--min-chars", "0")
    assert rc == 0 and len(rows) == 1
    assert rows[0]["content"] == "".join(para) and rows[0]["metadata"]["pages"] == [1, 2]


def test_pdf_with_only_an_owner_password_is_read(tmp_path: Path) -> None:
    from reportlab.lib.pdfencrypt import StandardEncryption
    from reportlab.pdfgen import canvas

    write_pdf(tmp_path / "font.pdf", [["注册字体。"]])  # registers STSong-Light
    (tmp_path / "d").mkdir()
    c = canvas.Canvas(str(tmp_path / "d" / "owner.pdf"), encrypt=StandardEncryption("", ownerPassword="owner",
                                                                                     canPrint=0, canCopy=0))
    c.setFont("STSong-Light", 11)
    c.drawString(50, 700, "只设了所有者密码的文件照样可以读取。")
    c.showPage()
    c.save()
    rc, rows, _ = run_slice(tmp_path, str(tmp_path / "d"), "--min-chars", "0")
    assert rc == 0 and [r["content"] for r in rows] == ["只设了所有者密码的文件照样可以读取。"]


def test_pdf_line_of_one_character_is_kept(tmp_path: Path) -> None:
    """A paragraph whose last wrapped line is one character: PDFium's text page drops such a line (why pypdf
    was chosen, bench_slice.py); the slice must hold it."""
    write_pdf(tmp_path / "d" / "x.pdf", [["图书馆开放时间为每天早上八点至晚上十点，考试周延长至晚上十一", "点", "？",
                                          "另起一段的内容。"]], footer_numbers=False)
    _, rows, _ = run_slice(tmp_path, str(tmp_path / "d"), "--min-chars", "0")
    assert nonblank("".join(r["content"] for r in rows)) == \
        "图书馆开放时间为每天早上八点至晚上十点，考试周延长至晚上十一点？另起一段的内容。"


# ---- bad input -----------------------------------------------------------------------------------------------


def test_bad_files_are_reported_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "good.md").write_text("# 好\n\n这是一份可以读取的文档。\n", encoding="utf-8")
    (d / "not-a-pdf.pdf").write_bytes(b"hello, I am not a PDF")
    good_pdf = write_pdf(tmp_path / "tmp.pdf", [["完整的页面内容。"]]).read_bytes()
    (d / "truncated.pdf").write_bytes(good_pdf[: len(good_pdf) // 3])
    write_pdf(d / "locked.pdf", [["加密的内容。"]], password="secret")
    (d / "not-a-zip.docx").write_bytes(b"plain bytes")
    (d / "encrypted.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600)
    (d / "binary.txt").write_bytes(b"\x00\x01\x02\xff\xfe\x00" * 50)
    (d / "empty.md").write_bytes(b"")
    (d / "old.doc").write_bytes(b"\xd0\xcf\x11\xe0")
    (d / "~$good.docx").write_bytes(b"lock")
    (d / "picture.png").write_bytes(b"\x89PNG")
    rc, rows, stats = run_slice(tmp_path, str(d), "--min-chars", "0")
    err = caplog.text
    assert rc == 0 and [r["content"] for r in rows] == ["# 好\n\n这是一份可以读取的文档。"]
    expected = {
        "not-a-pdf.pdf": "corrupt or unreadable PDF", "truncated.pdf": "corrupt or unreadable PDF",
        "locked.pdf": "encrypted PDF (a password is needed to open it)",
        "not-a-zip.docx": "not a valid DOCX file", "encrypted.docx": "an OLE container, not a DOCX zip",
        "binary.txt": "binary data", "empty.md": "empty file", "old.doc": "legacy binary Word .doc",
    }
    listed = {Path(b["file"]).name: b["reason"] for b in stats["bad_files"]["listed"]}
    assert set(listed) == set(expected)
    for name, reason in expected.items():
        assert listed[name].startswith(reason), (name, listed[name])
        assert f"{(d / name).as_posix()}: {reason}" in err
    assert stats["files"]["bad"] == 8 and stats["files"]["sliced"] == 1
    assert stats["files"]["passed_over"] == {"office lock file (~$)": 1, "other extension .png": 1}


def test_nothing_readable_exits_2_and_usage_errors(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.pdf").write_bytes(b"junk")
    assert slice_docs.main(["--in", str(tmp_path / "x.pdf"), "--out", str(tmp_path / "o.jsonl"),
                            "--no-progress"]) == 2
    for argv in (["--in", "x", "--out", "o", "--formats", "pdf,xls"], ["--in", "x"],
                 ["--in", "x", "--out", "o", "--max-tokens", "10"], ["--in", "x", "--out", "o", "--max-chars", "0"],
                 ["--in", "x", "--out", "o", "--max-chars", "50", "--overlap", "50"],
                 ["--in", str(tmp_path / "none"), "--out", "o"],
                 ["--in", str(tmp_path), "--out", "o", "--formats", "md"]):
        capfd.readouterr()
        assert slice_docs.main([*argv, "--no-progress"]) == 2, argv
        assert len(capfd.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ---- flags: tokens, overlap, min-chars, formats, limit, dry run -------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    rnd = random.Random(1)
    corpus = ["".join(paragraph(rnd, 5)) for _ in range(300)]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]"],
                                                        show_progress=False))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


@pytest.mark.parametrize("kind", ["tokenizer.json", "hf folder"])
def test_max_tokens_holds_by_the_tokenizers_own_count(tmp_path: Path, request: pytest.FixtureRequest,
                                                      kind: str) -> None:
    if kind == "tokenizer.json":
        from tokenizers import Tokenizer

        tokenizer_file = request.getfixturevalue("tokenizer_file")
        tok = Tokenizer.from_file(tokenizer_file)

        def count(s: str) -> int:
            return len(tok.encode(s, add_special_tokens=False).ids)
    else:  # the tiny chat model's folder, read by transformers (its BOS is not counted)
        tokenizer_file = request.getfixturevalue("tiny_model_dir")
        hf = request.getfixturevalue("tiny_tokenizer")

        def count(s: str) -> int:
            return len(hf(s, add_special_tokens=False)["input_ids"])
    rnd = random.Random(2)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.md").write_text("# 标题\n\n" + "\n\n".join("".join(paragraph(rnd, 9)) for _ in range(12)),
                                         encoding="utf-8")
    rc, rows, stats = run_slice(tmp_path, str(tmp_path / "d"), "--max-tokens", "60", "--tokenizer", tokenizer_file,
                                "--min-chars", "0")
    counts = [count(r["content"]) for r in rows]
    assert rc == 0 and len(rows) > 5
    assert max(counts) <= 60 and [r["metadata"]["tokens"] for r in rows] == counts
    assert stats["chars"]["coverage"] == 1.0 and stats["slices"]["cut_inside_sentence"] == 0


def test_overlap_repeats_whole_trailing_sentences(tmp_path: Path) -> None:
    rnd = random.Random(4)
    sentences = [sentence(rnd) for _ in range(40)]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.md").write_text("".join(sentences), encoding="utf-8")
    _, rows, _ = run_slice(tmp_path, str(tmp_path / "d"), "--max-chars", "120", "--overlap", "40")
    assert len(rows) > 3
    for a, b in pairwise(rows):
        n = b["metadata"].get("overlap_chars", 0)
        assert 0 < n <= 40
        repeated = b["content"][:n]
        assert a["content"].endswith(repeated)
        assert any(repeated.startswith(s) for s in sentences)  # starts at a sentence start
        assert b["metadata"]["char_start"] < a["metadata"]["char_end"]


def test_min_chars_merges_short_sections_and_drops_what_cannot_merge(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.md").write_text("## 一\n\n短。\n\n## 二\n\n也短。\n", encoding="utf-8")
    (tmp_path / "d" / "b.md").write_text("目录\n", encoding="utf-8")
    _, rows, stats = run_slice(tmp_path, str(tmp_path / "d"), "--min-chars", "10")
    assert [r["content"] for r in rows] == ["## 一\n\n短。\n\n## 二\n\n也短。"]
    assert rows[0]["metadata"]["headings"] == ["一"]
    assert stats["dropped"]["below_min_chars"] == {"slices": 1, "nonblank_chars": 2}
    assert stats["files"]["without_slices"] == 1


def test_min_chars_takes_whole_sentences_from_the_previous_slice_rather_than_drop(tmp_path: Path) -> None:
    s1 = "学生证遗失后应在七个工作日内到学院办公室申请补办手续。"  # 27 characters
    s2 = "补办需要携带一寸照片一张并且缴纳二十元的工本费用。"  # 25
    s3 = "逾期不办。"  # 5: beside s1 + s2 (52) it is over 55, and beside the next section (7 + 43) too
    nxt = "图书馆开放时间为每天早上八点至晚上十点，考试周延长一小时，节假日的开放时间另行通知。"  # 43
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.md").write_text(f"{s1}{s2}{s3}\n\n# 下一节\n\n{nxt}\n", encoding="utf-8")
    _, rows, stats = run_slice(tmp_path, str(tmp_path / "d"), "--max-chars", "55", "--min-chars", "10")
    assert [r["content"] for r in rows] == [s1, s2 + s3, f"# 下一节\n\n{nxt}"]
    assert stats["dropped"]["below_min_chars"]["slices"] == 0 and stats["chars"]["coverage"] == 1.0


def test_formats_limit_and_dry_run(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "d"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.md").write_text(f"# 文档{i}\n\n第{i}份文档的正文内容。\n", encoding="utf-8")
    (d / "x.txt").write_text("文本文件的内容。\n", encoding="utf-8")
    _, rows, stats = run_slice(tmp_path, str(d), "--formats", "txt", "--min-chars", "0")
    assert [r["content"] for r in rows] == ["文本文件的内容。"]
    assert stats["files"]["passed_over"] == {"format md not in --formats": 3}
    _, rows, _ = run_slice(tmp_path, str(d), "--limit", "2", "--min-chars", "0", out="o2.jsonl")
    assert [r["metadata"]["source"].rsplit("/", 1)[1] for r in rows] == ["0.md", "1.md"]
    capfd.readouterr()
    rc = slice_docs.main(["--in", str(d), "--dry-run", "--no-progress", "--min-chars", "0"])
    assert rc == 0 and "slices: 4" in capfd.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "o2.jsonl", "o2.stats.json", "out"]


# ---- stable ids ----------------------------------------------------------------------------------------------


def test_ids_are_stable_and_unchanged_slices_keep_them(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    rnd = random.Random(8)
    paras = "\n\n".join("".join(paragraph(rnd, 6)) for _ in range(5))
    (d / "a.md").write_text(paras + "\n\n重复段落。\n\n重复段落。\n", encoding="utf-8")
    write_docx(d / "b.docx", [("h1", "标题"), ("p", "".join(paragraph(rnd, 4)))])
    _, first, _ = run_slice(tmp_path, str(d), "--max-chars", "120", "--min-chars", "0")
    run_slice(tmp_path, str(d), "--max-chars", "120", "--min-chars", "0", out="again.jsonl")
    assert (tmp_path / "out" / "slices.jsonl").read_bytes() == (tmp_path / "again.jsonl").read_bytes()
    ids = [r["id"] for r in first]
    assert len(set(ids)) == len(ids)  # the repeated paragraph gets an id of its own
    (d / "0-new.md").write_text("# 新增\n\n新加入的文档内容。\n", encoding="utf-8")
    _, more, _ = run_slice(tmp_path, str(d), "--max-chars", "120", "--min-chars", "0", out="more.jsonl")
    assert [r for r in more if r["metadata"]["source"].endswith(("a.md", "b.docx"))] == first
    assert len(more) == len(first) + 1


def test_workers_give_the_same_output_byte_for_byte(tmp_path: Path, tokenizer_file: str) -> None:
    d = tmp_path / "d"
    rnd = random.Random(13)
    for i in range(6):
        d.mkdir(exist_ok=True)
        (d / f"{i}.md").write_text(f"# 文档{i}\n\n" + "\n\n".join("".join(paragraph(rnd, 5)) for _ in range(4)),
                                   encoding="utf-8")
    write_pdf(d / "p.pdf", [wrap(paragraph(rnd, 8), 36), "image"])
    write_docx(d / "w.docx", [("h1", "标题"), ("p", "".join(paragraph(rnd, 6)))])
    (d / "bad.pdf").write_bytes(b"broken")
    for limit in (["--max-chars", "150"], ["--max-tokens", "50", "--tokenizer", tokenizer_file]):
        _, one, s1 = run_slice(tmp_path, str(d), *limit, out="one.jsonl")
        _, _, s2 = run_slice(tmp_path, str(d), *limit, "--workers", "2", out="two.jsonl")
        assert len(one) > 10 and (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
        for key in ("files", "bad_files", "pages", "chars", "removed", "dropped", "slices"):
            assert s1[key] == s2[key], key


# ---- HTML ----------------------------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html><html><head><meta charset="gbk"><title>学生证补办</title><script>var x = "脚本";</script>
</head><body><header><nav><a href="/">首页</a> | <a href="/news">新闻中心</a> | <a href="/login">登录</a></nav>
</header>
<div class="sidebar"><ul><li><a href="/a">相关链接一</a></li><li><a href="/b">热门文章二</a></li></ul></div>
<main><article><h1>学生证补办流程</h1><p>学生证遗失后，应在七个工作日内到学院办公室申请补办。补办需要一寸照片一张。</p>
<h2>一、办理地点</h2><p>学院办公室位于主楼三楼，工作日上午八点至十一点半办公，下午一点半至五点办公。</p>
<h2>二、收费标准</h2><table><tr><th>项目</th><th>费用</th></tr><tr><td>学生证</td><td>二十元</td></tr></table>
<p>如有疑问，请拨打学院办公室电话咨询，我们将竭诚为您服务。</p></article></main>
<footer><p>版权所有 2026 某某大学 | 备案号：京ICP备000000号</p></footer></body></html>"""


def test_html_main_text_without_navigation(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "page.htm").write_bytes(PAGE.encode("gbk"))
    rc, rows, _ = run_slice(tmp_path, str(tmp_path / "d"), "--min-chars", "0")
    text = "\n".join(r["content"] for r in rows)
    assert rc == 0
    for kept in ("学生证遗失后，应在七个工作日内到学院办公室申请补办。", "学院办公室位于主楼三楼",
                 "| 学生证 | 二十元 |", "如有疑问"):
        assert kept in text
    for dropped in ("新闻中心", "相关链接一", "备案号", "脚本"):
        assert dropped not in text
    assert [r["metadata"]["headings"] for r in rows][-1] == ["学生证补办流程", "二、收费标准"]


# ---- make distill DOCS= end to end -----------------------------------------------------------------------------


def distill_script(body: dict[str, Any], attempt: int) -> Reply:
    msgs = body["messages"]
    if msgs[0]["role"] == "system" and "评审员" in msgs[0]["content"]:  # a judge
        scores = dict.fromkeys(["accuracy", "completeness", "logicality", "helpfulness", "safety"], 8)
        return Reply.ok(orjson.dumps({"reasons": dict.fromkeys(scores, "理由"), "scores": scores}).decode())
    user = msgs[-1]["content"]
    index = int(regex.search(r"第 (\d+)/", user).group(1))
    key = regex.search(r"编号(\w+)", user).group(1)
    q = f"请根据资料说明编号{key}相关规定的第{index}个要点是什么？"
    a = f"根据资料，编号{key}的相关规定要求同学们按时办理手续，并携带所需材料前往指定地点，第{index}个要点如上所述。"
    return Reply.ok(orjson.dumps({"instruction": q, "input": "", "output": a}).decode())


def test_make_distill_docs_end_to_end_and_resume_pays_only_for_new_slices(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    rnd = random.Random(12)
    write_docx(docs / "handbook.docx", [("h1", "第一章 学生证"), ("p", "编号甲一：" + "".join(paragraph(rnd, 4)))])
    (docs / "library.md").write_text("# 图书馆\n\n编号乙二：" + "".join(paragraph(rnd, 4)) + "\n", encoding="utf-8")
    write_pdf(docs / "rules.pdf", [["第一章 宿舍", *wrap(["编号丙三：", *paragraph(rnd, 4)], 36)]])
    out = tmp_path / "distilled"
    slices = tmp_path / "slices.jsonl"
    with StubServer(distill_script) as srv:
        cfg = tmp_path / "cfg.json"
        cfg.write_bytes(orjson.dumps({
            "generator": {"api_base": srv.base_url, "model": "gen-m", "max_concurrent": 4},
            "judges": [{"name": "A", "model": "m-a", "base_url": srv.base_url, "retries": 0}],
            "min_votes": 1, "samples_per_slice": 2, "enable_dedup": False}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MAKE"))}
        env["OPENAI_API_KEY"] = "sk-local-test"
        cmd = ["make", "-s", "-o", ".venv/.stamp", "distill", f"PYTHON={sys.executable}", f"DOCS={docs}/",
               f"SLICES={slices}", f"DISTILL_CONFIG={cfg}", f"DISTILL_OUT={out}", "SLICE_FLAGS=--no-progress"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        rows = [orjson.loads(x) for x in slices.read_bytes().splitlines()]
        assert len(rows) == 3
        gen_calls = sum(b["model"] == "gen-m" for b in srv.requests)
        assert gen_calls == 6
        train = [orjson.loads(x) for x in (out / "train.jsonl").read_bytes().splitlines()]
        val = [orjson.loads(x) for x in (out / "val.jsonl").read_bytes().splitlines()] \
            if (out / "val.jsonl").exists() else []
        assert len(train) + len(val) == 6
        # a new document: only its slice is sent to the generator (and its records to the judge)
        (docs / "new.md").write_text("# 食堂\n\n编号丁四：" + "".join(paragraph(rnd, 4)) + "\n", encoding="utf-8")
        before = len(srv.requests)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        new = srv.requests[before:]
        assert sum(b["model"] == "gen-m" for b in new) == 2 and sum(b["model"] == "m-a" for b in new) == 2
        assert all("编号丁四" in b["messages"][-1]["content"] for b in new if b["model"] == "gen-m")
    meta = orjson.loads((out / "metadata.json").read_bytes())
    assert meta["counts"]["input_records"] == 8
