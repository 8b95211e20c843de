"""Sample documents written by real libraries, for tests and bench/bench_slice.py: DOCX by python-docx, PDF with
real (CJK) text by reportlab's built-in STSong-Light CID font (no font file needed), and Chinese prose with known
sentence boundaries. reportlab is a development requirement (requirements-dev.txt), imported only here."""

from __future__ import annotations

import random
from pathlib import Path

# Everyday campus-handbook vocabulary: the sentences read like the documents a team would slice.
_WORDS = ("学生证 图书馆 学院办公室 教务处 辅导员 申请表 工作日 开放时间 考试周 宿舍 食堂 校园卡 奖学金 选课 "
          "学分 毕业论文 实验室 体育馆 医务室 保卫处 财务处 通知 材料 手续 规定 流程 安排 同学 老师 学期").split()
_VERBS = "办理 提交 领取 查询 预约 缴纳 携带 登记 补办 确认 填写 咨询".split()
_ENDS = ("。", "！", "？", "；", "……", "。”", "？」", "。）")


def sentence(rnd: random.Random, min_words: int = 2, max_words: int = 8) -> str:
    """One Chinese sentence with an end mark (sometimes with a closing quote or bracket, opened inside)."""
    words = [rnd.choice(_WORDS if i % 2 == 0 else _VERBS) for i in range(rnd.randint(min_words, max_words))]
    body = "，".join("".join(words[i:i + 2]) for i in range(0, len(words), 2))
    end = rnd.choice(_ENDS)
    opener = {"。”": "“", "？」": "「", "。）": "（"}.get(end, "")
    return f"{opener}{body}{end}" if opener else f"{body}{end}"


def paragraph(rnd: random.Random, n: int) -> list[str]:
    return [sentence(rnd) for _ in range(n)]


def write_docx(path: Path, blocks: list[tuple[str, object]]) -> Path:
    """blocks: ("title"|"h1"|"h2"|"h3", text), ("p", text), ("bullet"|"number", text), ("table", rows),
    ("outline2", text) (a custom style with outline level 2, as Chinese Word templates make)."""
    import docx
    from docx.enum.style import WD_STYLE_TYPE
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    d = docx.Document()
    for kind, value in blocks:
        if kind == "title":
            d.add_heading(str(value), 0)
        elif kind in ("h1", "h2", "h3"):
            d.add_heading(str(value), int(kind[1]))
        elif kind == "p":
            d.add_paragraph(str(value))
        elif kind == "bullet":
            d.add_paragraph(str(value), style="List Bullet")
        elif kind == "number":
            d.add_paragraph(str(value), style="List Number")
        elif kind == "outline2":
            name = "章节标题样式"
            if name not in [s.name for s in d.styles]:
                style = d.styles.add_style(name, WD_STYLE_TYPE.PARAGRAPH)
                ppr = style.element.get_or_add_pPr()
                lvl = OxmlElement("w:outlineLvl")
                lvl.set(qn("w:val"), "1")
                ppr.append(lvl)
            d.add_paragraph(str(value), style=name)
        elif kind == "table":
            rows = list(value)  # type: ignore[call-overload]
            t = d.add_table(rows=len(rows), cols=len(rows[0]))
            for i, row in enumerate(rows):
                for j, cell in enumerate(row):
                    t.cell(i, j).text = cell
        else:
            raise ValueError(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    d.save(str(path))
    return path


def write_pdf(path: Path, pages: list[list[str] | str], header: str = "", footer_numbers: bool = True,
              password: str = "") -> Path:
    """Pages of text lines (one drawString each, 11 pt STSong-Light). A page given as the string "image" holds
    only a picture (a scanned page), "" is an empty page. `header` goes on top of every text page, and
    "第 N 页" at the bottom when `footer_numbers`."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    if "STSong-Light" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    path.parent.mkdir(parents=True, exist_ok=True)
    c = canvas.Canvas(str(path), encrypt=password or None)
    for n, lines in enumerate(pages, 1):
        if lines == "image":
            from PIL import Image
            from reportlab.lib.utils import ImageReader

            img = Image.new("RGB", (200, 100), (200, 200, 200))
            for x in range(0, 200, 7):
                for y in range(40, 60):
                    img.putpixel((x, y), (0, 0, 0))
            c.drawImage(ImageReader(img), 72, 500, width=400, height=200)
        elif lines:
            if header:
                c.setFont("STSong-Light", 9)
                c.drawString(72, 810, header)
            c.setFont("STSong-Light", 11)
            y = 780
            for line in lines:
                c.drawString(50, y, line)
                y -= 16
            if footer_numbers:
                c.setFont("STSong-Light", 9)
                c.drawString(280, 30, f"第 {n} 页")
        c.showPage()
    c.save()
    return path


def wrap(sentences: list[str], width: int) -> list[str]:
    """Lines of at most `width` characters, as a PDF typesets a paragraph (sentences run on across lines)."""
    text = "".join(sentences)
    return [text[i:i + width] for i in range(0, len(text), width)]
