#!/usr/bin/env python
"""slice_docs.py at scale, and the libraries it was chosen over, on a generated corpus of known text.

Rows:
  1. slice_docs.py on DOCS documents (md, txt in UTF-8 and GB18030, docx, pdf, html): wall time, text MB/s,
     PDF pages/s, slices, coverage, peak RSS (ru_maxrss that wait4 reports for the process); the same on
     a tenth of the corpus, so the two peaks
     show whether memory grows with the corpus (it should not: one document at a time), and the peak RSS after
     each tenth of one in-process run over the shuffled corpus
  2. per format: MB/s (pages/s for PDF) with --formats X
  3. PDF text: pypdf (used) vs pypdfium2 vs pdfplumber: pages/s and share of the known sentences recovered
  4. HTML main text: trafilatura (used) vs readability-lxml: share of article sentences kept, boilerplate lines
     leaked, tables kept, pages/s
  5. encoding detection on short Chinese texts (GB18030, Big5, UTF-16): chardet 7 (used) vs charset-normalizer
  6. splitting quality on the Markdown part: ours vs fixed-length windows of the same size (what easy-dataset
     does by default): boundaries inside a sentence, headings left at the end of a slice
Alternatives that are not installed are skipped (they are not project requirements); run with them installed
to reproduce README's table.
Usage: python bench/bench_slice.py [--docs 10000] [--max-chars 400] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import regex

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftkit.docs.readers import read_markdown  # noqa: E402
from sftkit.docs.split import SENTENCE_END, Limits, SplitCounts, split_document  # noqa: E402
from sftkit.testing.doc_samples import paragraph, sentence, wrap, write_docx, write_pdf  # noqa: E402

BOILERPLATE = ["首页 | 新闻中心 | 学校概况 | 登录入口", "相关链接：教务处 图书馆 校医院", "热门文章排行榜",
               "版权所有 某某大学 备案号：京ICP备000000号", "地址：某某市某某路1号 邮编：150001"]


def make_sections(rnd: random.Random, n: int) -> list[tuple[str, list[list[str]]]]:
    return [(f"第{i + 1}节 {rnd.choice(['学生证', '图书馆', '宿舍', '选课', '奖学金'])}管理",
             [paragraph(rnd, rnd.randint(2, 12)) for _ in range(rnd.randint(2, 5))]) for i in range(n)]


def build_corpus(root: Path, n_docs: int, seed: int = 0) -> dict[str, list]:
    """Files under root; returns the known sentences per PDF and HTML file (for the extraction rows)."""
    rnd = random.Random(seed)
    known: dict[str, list] = {"pdf": [], "html": []}
    n_pdf, n_docx, n_html = max(1, n_docs // 100), max(1, n_docs // 50), max(1, n_docs // 30)
    n_text = n_docs - n_pdf - n_docx - n_html
    for i in range(n_text):
        secs = make_sections(rnd, rnd.randint(3, 8))
        sub = root / f"dept{i % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        if i % 3 == 0:  # plain text, every other one GB18030
            body = "\n\n".join(f"{t}\n\n" + "\n\n".join("".join(p) for p in ps) for t, ps in secs)
            (sub / f"doc{i:05d}.txt").write_bytes(body.encode("gb18030" if i % 2 else "utf-8"))
        else:
            body = "\n\n".join(f"## {t}\n\n" + "\n\n".join("".join(p) for p in ps) for t, ps in secs)
            if i % 7 == 0:
                rows = "\n".join(f"| 事项{j} | {sentence(rnd)} |" for j in range(30))
                body += f"\n\n| 项目 | 说明 |\n|---|---|\n{rows}"
            (sub / f"doc{i:05d}.md").write_text(f"# 文档{i}\n\n{body}\n", encoding="utf-8")
    for i in range(n_docx):
        blocks: list[tuple[str, object]] = [("title", f"文件{i}")]
        for t, ps in make_sections(rnd, rnd.randint(3, 6)):
            blocks.append(("h1", t))
            blocks += [("p", "".join(p)) for p in ps]
        blocks.append(("table", [("项目", "说明")] + [(f"事项{j}", sentence(rnd)) for j in range(8)]))
        write_docx(root / "word" / f"file{i:04d}.docx", blocks)
    for i in range(n_pdf):
        pages, sents = [], []
        for _ in range(5):
            ps = [paragraph(rnd, rnd.randint(3, 8)) for _ in range(4)]
            sents += [s for p in ps for s in p]
            pages.append([line for p in ps for line in wrap(p, 38)][:46])
        write_pdf(root / "pdf" / f"report{i:04d}.pdf", pages, header="某某大学学生手册（2026 版）")
        known["pdf"].append((root / "pdf" / f"report{i:04d}.pdf", sents))
    for i in range(n_html):
        # one page in three is short (a notice: one section, one paragraph), where extractors differ most
        secs = make_sections(rnd, rnd.randint(2, 5)) if i % 3 else [(f"通知{i}", [paragraph(rnd, 2)])]
        art = "".join(f"<h2>{t}</h2>" + "".join(f"<p>{''.join(p)}</p>" for p in ps) for t, ps in secs)
        rows = [(f"事项{j}", f"{j * 5}元") for j in range(5 if i % 3 else 1)]
        table = "<table><tr><th>项目</th><th>费用</th></tr>" + "".join(
            f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in rows) + "</table>"
        nav = "".join(f"<li><a href='/x{j}'>{b}</a></li>" for j, b in enumerate(BOILERPLATE[:3]))
        page = (f"<html><head><meta charset='utf-8'><title>页面{i}</title><script>var a=1;</script></head><body>"
                f"<header><nav><ul>{nav}</ul></nav></header><div class='sidebar'>{BOILERPLATE[1]}</div>"
                f"<main><article><h1>页面{i}</h1>{art}{table}</article></main>"
                f"<footer><p>{BOILERPLATE[3]}</p><p>{BOILERPLATE[4]}</p></footer></body></html>")
        path = root / "web" / f"page{i:04d}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
        known["html"].append((path, [s for _, ps in secs for p in ps for s in p], rows))
    return known


def run_slicer(inputs: list[str], out: Path, extra: list[str]) -> tuple[float, float, dict]:
    """(wall s, peak RSS MB, stats) of one slice_docs.py process."""
    cmd = [sys.executable, str(ROOT / "slice_docs.py"), "--in", *inputs, "--out", str(out), "--no-progress",
           "--log", "ERROR", *extra]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"slice_docs.py failed: {' '.join(cmd)}")
    stats = orjson.loads(out.with_name(out.name[:-6] + ".stats.json").read_bytes())
    return wall, usage.ru_maxrss / 1024, stats


def memory_curve(root: Path, max_chars: int) -> list[tuple[str, ...]]:
    """Peak RSS after each tenth of one in-process run, files in a seeded shuffled order (every tenth holds the
    same mix of formats): flat means memory does not grow with the number of documents."""
    import resource

    from sftkit.docs.stage import SliceStats, discover, run

    files, _ = discover([str(root)], ("md", "txt", "docx", "pdf", "html"))
    random.Random(0).shuffle(files)
    marks: list[tuple[str, ...]] = []
    step = max(len(files) // 10, 1)

    class Sink:
        def write(self, b: bytes) -> int:
            return len(b)

    def on_file(st: SliceStats) -> None:
        if st.files_seen % step == 0 or st.files_seen == len(files):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            marks.append((str(st.files_seen), str(st.slices), f"{peak:.0f}"))

    run(files, Limits(max_chars, 20, 0), Sink(), SliceStats(), False, on_file)  # type: ignore[arg-type]
    return marks


def nb(s: str) -> str:
    return regex.sub(r"\s+", "", s)


def pdf_row(known: list) -> list[tuple[str, str, str]]:
    def pdfium(path: Path) -> list[str]:
        import pypdfium2 as pdfium

        d = pdfium.PdfDocument(path)
        out = [d[i].get_textpage().get_text_range() for i in range(len(d))]
        d.close()
        return out

    def pypdf_(path: Path) -> list[str]:
        import pypdf

        return [p.extract_text() for p in pypdf.PdfReader(path).pages]

    def plumber(path: Path) -> list[str]:
        import pdfplumber

        with pdfplumber.open(path) as pdf:
            return [p.extract_text() or "" for p in pdf.pages]

    rows = []
    for name, fn, mod in (("pypdf (used)", pypdf_, "pypdf"), ("pypdfium2", pdfium, "pypdfium2"),
                          ("pdfplumber", plumber, "pdfplumber")):
        try:
            __import__(mod)
        except ImportError:
            rows.append((name, "not installed", ""))
            continue
        pages = found = total = 0
        t = time.perf_counter()
        texts = [(fn(path), sents) for path, sents in known]
        dt = time.perf_counter() - t
        for ptexts, sents in texts:
            pages += len(ptexts)
            joined = nb("".join(ptexts))
            found += sum(nb(s) in joined for s in sents)
            total += len(sents)
        rows.append((name, f"{pages / dt:.1f}", f"{found / total:.4f}"))
    return rows


def html_row(known: list) -> list[tuple[str, ...]]:
    def traf(html: str) -> str:
        from sftkit.docs.readers import read_html

        return read_html(html.encode(), "x").text

    def readab(html: str) -> str:
        import lxml.html
        from readability import Document

        return lxml.html.fromstring(Document(html).summary(html_partial=True)).text_content()

    rows = []
    for name, fn, mod in (("trafilatura (used)", traf, "trafilatura"), ("readability-lxml", readab, "readability")):
        try:
            __import__(mod)
        except ImportError:
            rows.append((name, "not installed", "", "", ""))
            continue
        kept = total = leaked = tables = 0
        t = time.perf_counter()
        outs = [(fn(path.read_text(encoding="utf-8")), sents, trows) for path, sents, trows in known]
        dt = time.perf_counter() - t
        for text, sents, trows in outs:
            flat = nb(text)
            kept += sum(nb(s) in flat for s in sents)
            total += len(sents)
            leaked += sum(nb(b) in flat for b in BOILERPLATE)
            tables += all(a in text and b in text for a, b in trows)
        rows.append((name, f"{kept / total:.4f}", f"{leaked}/{len(outs) * len(BOILERPLATE)}",
                     f"{tables}/{len(outs)}", f"{len(outs) / dt:.1f}"))
    return rows


def encoding_row(n: int = 300) -> list[tuple[str, ...]]:
    rnd = random.Random(3)
    samples = []
    for i in range(n):
        text = "".join(sentence(rnd) for _ in range(1 + i % 6))[: 10 + (i * 7) % 190]
        enc = ("gb18030", "utf-16", "big5")[i % 3]
        if enc == "big5":
            text = text.translate(str.maketrans("学证馆办补费书图号时后馆间", "學證館辦補費書圖號時後館間"))
            text = "".join(ch for ch in text if ch.encode("big5", errors="ignore"))
        samples.append((text, text.encode(enc)))

    def cn(data: bytes) -> str | None:
        import charset_normalizer

        best = charset_normalizer.from_bytes(data).best()
        return str(best) if best else None

    def cd(data: bytes) -> str | None:
        import chardet

        enc = chardet.detect(data)["encoding"]
        try:
            return data.decode(enc) if enc else None
        except (UnicodeDecodeError, LookupError):
            return None

    rows = []
    for name, fn, mod in (("chardet 7 (used)", cd, "chardet"), ("charset-normalizer", cn, "charset_normalizer")):
        try:
            __import__(mod)
        except ImportError:
            rows.append((name, "not installed", ""))
            continue
        t = time.perf_counter()
        ok = sum(fn(b) == text for text, b in samples)
        rows.append((name, f"{ok}/{len(samples)}", f"{(time.perf_counter() - t) * 1000 / len(samples):.2f}"))
    return rows


def split_quality(root: Path, max_chars: int, limit: int = 300) -> list[tuple[str, ...]]:
    """Boundaries inside a sentence and headings stranded at a slice end: ours vs fixed-length windows."""
    files = sorted(root.rglob("*.md"))[:limit]
    ours = [0, 0, 0]
    fixed = [0, 0, 0]

    def judge(text: str, ends: set[int], heads: list[tuple[int, int]], bounds: list[tuple[int, int]],
              acc: list[int]) -> None:
        for s, e in bounds[:-1]:
            acc[0] += 1
            cut_end = s + len(text[s:e].rstrip())
            if cut_end not in ends and not text[cut_end:cut_end + 2].startswith("\n"):
                acc[1] += 1
            if any(s <= hs < cut_end <= he + 1 for hs, he in heads):
                acc[2] += 1

    for f in files:
        doc = read_markdown(f.read_bytes(), f.name)
        text = doc.text
        ends = {m.end() for m in SENTENCE_END.finditer(text)}
        heads = [(b.start, b.end) for b in doc.blocks if b.kind == "heading"]
        slices = split_document(doc, Limits(max_chars), SplitCounts())
        judge(text, ends, heads, [(s.start, s.end) for s in slices], ours)
        judge(text, ends, heads, [(i, min(i + max_chars, len(text))) for i in range(0, len(text), max_chars)], fixed)
    return [(name, str(a[0]), f"{a[1] / max(a[0], 1):.3f}", f"{a[2] / max(a[0], 1):.3f}")
            for name, a in (("slice_docs (structure-aware)", ours), (f"fixed {max_chars}-char windows", fixed))]


def table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=10000)
    ap.add_argument("--max-chars", type=int, default=320)
    ap.add_argument("--keep", help="build the corpus here and keep it (default: a temp folder, removed)")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_slice_"))
    try:
        t = time.perf_counter()
        corpus, small = root / "corpus", root / "small"
        known = build_corpus(corpus, args.docs)
        build_corpus(small, max(args.docs // 10, 10), seed=1)
        size = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())
        print(f"corpus: {args.docs} documents, {size / 1e6:.1f} MB, built in {time.perf_counter() - t:.1f} s\n")
        flags = ["--max-chars", str(args.max_chars)]
        rows = []
        for label, path, extra in ((f"{args.docs // 10 if args.docs >= 100 else 10} documents", small, []),
                                   (f"{args.docs} documents", corpus, []),
                                   (f"{args.docs} documents, --workers 2", corpus, ["--workers", "2"])):
            wall, rss, st = run_slicer([str(path)], root / "out" / "slices.jsonl", [*flags, *extra])
            tp = st["throughput"]
            rows.append((label, f"{st['files']['sliced']}", f"{st['slices']['count']}", f"{wall:.1f}",
                         f"{tp['text_mb_per_s']}", f"{tp['pdf_pages_per_s']}", f"{st['chars']['coverage']:.6f}",
                         f"{rss:.0f}"))
        table(("run", "files", "slices", "wall s", "text MB/s", "PDF pages/s", "coverage", "peak RSS MB"), rows)
        table(("documents done (shuffled order, one process)", "slices", "peak RSS MB so far"),
              memory_curve(corpus, args.max_chars))
        rows = []
        for fmt in ("md", "txt", "docx", "html", "pdf"):
            wall, _, st = run_slicer([str(corpus)], root / "out" / f"{fmt}.jsonl", [*flags, "--formats", fmt])
            mb = st["files"]["bytes_by_format"].get(fmt, 0) / 1e6
            speed = (f"{st['pages']['total'] / wall:.1f} pages/s" if fmt == "pdf" else f"{mb / wall:.2f} MB/s")
            rows.append((fmt, str(st["files"]["by_format"].get(fmt, 0)), f"{mb:.1f}", str(st["slices"]["count"]),
                         f"{wall:.1f}", speed))
        table(("format", "files", "MB", "slices", "wall s (whole process)", "throughput"), rows)
        table(("PDF library", "pages/s", "known sentences recovered"), pdf_row(known["pdf"]))
        table(("HTML extractor", "article sentences kept", "boilerplate leaked", "tables kept", "pages/s"),
              html_row(known["html"][:200]))
        table(("encoding detector", "decoded exactly", "ms/sample"), encoding_row())
        table(("splitter", "boundaries", "inside a sentence", "heading stranded at the end"),
              split_quality(corpus, args.max_chars))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
