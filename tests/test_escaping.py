"""User text in the files other tools read: every escape function against hand-written strings,
then a run whose prompt-set name (a file stem), category, method parameter and prompt are hostile,
with each file it writes parsed back (Markdown rendered by markdown-it, LaTeX tokenized and
compiled when pdflatex exists, CSV through the csv module, HTML through html.parser)."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from markdown_it import MarkdownIt

from bench import compare
from bench.cli import main
from bench.escape import (csv_cell, csv_uncell, html_text, md_code, md_text, mpl_text, one_line, tex_comment,
                          tex_text)
from bench.report import boards as boards_mod
from bench.report import joined_table, page, plots, tables
from bench.spec import MethodChain
from bench.store import RunStore
from bench.metrics.base import Cell, MetricInfo, Scorer

# Everything the issue names: line breaks, |, \input, =cmd|, a lone backslash, % & # _ {}, $ (TeX
# math and matplotlib mathtext), <script>, a Markdown link, HTML and block markup.
ATTACK = ("=cmd|' /C calc'!A0\n## forged heading\n| forged | row |\r\n\\input{/etc/passwd} \\ "
          "% & # _ {} $\\lccode$ <script>alert(1)</script> [x](javascript:alert(1)) *b* `c`")
STEM = ATTACK.replace("/", "")  # a file name holds anything but / (and NUL)
FAST = ["--model", "tiny-random", "--steps", "3", "--quiet"]


# --- each function, against strings written out by hand --------------------------------------
ORDINARY = ["parity_l2[skin]", "exp_max_inappropriate[violence]", "sld-strong:warmup=5",
            "fair-mapping+sld-strong", "world-occupations-groups-0 (guidance 7.5)", "s/image",
            "exp_max_inappropriate[neutral]: only 2 prompts (< 25) for baseline, debias-vl; "
            "every draw is the whole set", "requested_group_rate[skin] ↑", "i2p:hard=1,limit=50"]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_names_pass_unchanged_into_markdown_and_csv(text):
    # The committed results/world/leaderboard.{md,csv} stay byte-identical.
    assert md_text(text) == text
    assert csv_cell(text) == text
    assert mpl_text(text) == text


@pytest.mark.parametrize("text, expected", [
    ("a|b", r"a\|b"),
    ("a\\|b", r"a\\\|b"),  # the user's \ must not un-escape our \|
    ("lone \\", "lone \\\\"),
    ("one\ntwo\r\nthree\rfour\u2028five\tsix", "one two  three four five six"),
    ("## forged", r"\#\# forged"),
    ("- item", r"\- item"),
    ("> quote", r"\> quote"),
    ("1. first", r"1\. first"),
    ("[x]: http://evil", r"\[x]: http://evil"),
    ("see [x](javascript:alert(1))", r"see [x\](javascript:alert(1))"),
    ("![i](src)", r"\![i\](src)"),
    ("<script>alert(1)</script>", r"\<script>alert(1)\</script>"),
    ("a < 25 & b", "a < 25 & b"),
    ("&lt; &#60;", r"\&lt; &\#60;"),  # "&\#" starts no entity
    ("*em* `code` ~~del~~ $x$", r"\*em\* \`code\` \~\~del\~\~ \$x\$"),
    ("_em_ snake_case __init__", r"\_em\_ snake_case \_\_init\_\_"),
    ("% & # _ {}", r"\% & \# \_ {}"),
    ("  padded  ", "padded"),
])
def test_md_text(text, expected):
    assert md_text(text) == expected
    # Rendered (raw HTML allowed, as the laxest renderers do), it is the text and nothing else,
    # as a list item, a heading or a table cell alike.
    md = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    plain = one_line(text).strip()
    for source, tag in ((f"- {expected}", "li"), (f"## {expected}", "h2"),
                        (f"| a |\n|---|\n| {expected} |", "td")):
        doc = Tags(md.render(source))
        assert doc.text[tag] == [plain], source
        assert {t for t, _ in doc.tags} <= {"ul", "li", "h2", "table", "thead", "tbody", "tr",
                                            "th", "td"}


@pytest.mark.parametrize("text, expected", [
    ("runs/a", "`runs/a`"),
    ("a`b", "``a`b``"),
    ("`x``", "``` `x`` ```"),
    ("a\nb|c", "`a b|c`"),
])
def test_md_code(text, expected):
    assert md_code(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("parity_l2[skin]", r"parity\_l2[skin]"),
    ("\\input{/etc/passwd}", r"\textbackslash{}input\{/etc/passwd\}"),
    ("% & # _ $ ~ ^", r"\% \& \# \_ \$ \textasciitilde{} \textasciicircum{}"),
    ("<a|b>", r"\textless{}a\textbar{}b\textgreater{}"),
    ("lone \\", r"lone \textbackslash{}"),
    ("a\n\nb", "a  b"),  # a blank line would be \par inside a cell
    ("[2pt] x", "{[}2pt] x"),  # after a row's \\ it would be the row's vertical space
    ("*x", "{*}x"),
])
def test_tex_text(text, expected):
    assert tex_text(text) == expected


def test_tex_comment_keeps_everything_on_the_comment_line():
    assert tex_comment("a\n\\input{/etc/passwd}\r%x") == "a \\input{/etc/passwd} %x"


@pytest.mark.parametrize("text, expected", [
    ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
    ("+1", "'+1"), ("-1+2", "'-1+2"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1", "'\t=1"), ("\r=1", "'\n=1"), ("\n=1", "'\n=1"),
    ("a\rb", "a\nb"),  # unquoted, a lone CR splits the row for Python's csv reader
    ("a=1", "a=1"), ("'quoted'", "'quoted'"),
])
def test_csv_cell(text, expected):
    assert csv_cell(text) == expected
    assert csv_uncell(expected) == text.replace("\r\n", "\n").replace("\r", "\n")


def test_html_text_and_mpl_text():
    assert html_text("<a href='x'>\"&\"</a>") == ("&lt;a href=&#x27;x&#x27;&gt;&quot;&amp;&quot;"
                                                  "&lt;/a&gt;")
    assert mpl_text(r"a $\input{x}$ b") == r"a \$\input{x}\$ b"
    assert one_line("a\x00b\x7fc\x85d") == "a b c d"


def test_plots_draw_labels_with_dollars_as_text(tmp_path):
    # Unescaped, a pair of $ starts mathtext and an unknown \input there makes savefig raise.
    metric = "parity_l2[$\\input{x}$]"
    info = MetricInfo(metric, "", False, "d")
    cells = {m: {metric: Cell(0.3 + i / 10, 0.2, 0.6, 4), "quality": Cell(0.5, 0.4, 0.6, 4)}
             for i, m in enumerate(["baseline", "sld-strong:concept=$\\lowercase{x}$"])}
    board = tables.Leaderboard("$$ (guidance 7.5)", (info, MetricInfo("quality", "", True, "q")),
                               cells)
    assert plots.metric_bars(board, metric, tmp_path / "bars.png")[0].stat().st_size > 0
    assert plots.tradeoff(board, metric, "quality", tmp_path / "trade.png")[0].stat().st_size > 0


# --- a run with hostile names, every file parsed back -----------------------------------------
class FlagPrompts(Scorer):
    """Stands in for Q16: flags the images of the hostile prompt, so the run gets the I2P
    leaderboard with a cell per category (the categories become metric names)."""

    name = "q16"
    flags = ("q16.flag",)  # as Q16 declares: the safety suite's inappropriateness reads it

    def __init__(self, device=None):
        pass

    def score(self, images, rows):
        return pd.DataFrame({"q16.flag": (rows["prompt"] == ATTACK).astype(float).to_numpy()},
                            index=rows.index)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    from bench.registry import METRICS

    root = tmp_path_factory.mktemp("hostile")
    prompts = root / f"{STEM}.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": ATTACK, "categories": "violence," + ATTACK},
        {"prompt": "a photo of a cat", "categories": "neutral"}]))
    method = "sld-strong:concept=" + ATTACK
    saved = dict(METRICS._entries)
    METRICS.register("q16", FlagPrompts)
    try:
        out = root / "run"
        assert main(["run", *FAST, "--metrics", "q16", "--methods", f"baseline,{method}",
                     "--prompt-set", str(prompts), "--samples", "1", "--out", str(out)]) == 0
        store = RunStore(out)
        boards = [b for b in boards_mod.leaderboards(
            joined_table(store), boards_mod.Context(timing=store.timing()))]
    finally:
        METRICS._entries = saved
    return out, boards, str(MethodChain.parse(method))


def test_hostile_run_has_the_hostile_strings_in_its_boards(hostile_run):
    _, boards, method = hostile_run
    (board,) = boards
    assert board.title == f"{STEM} (guidance 7.5)"
    assert board.methods() == ["baseline", method]
    assert f"inappropriate_prob[{ATTACK.strip()}]" in [i.name for i in board.infos]
    assert any(method in n for n in board.notes)


class Tags(HTMLParser):
    def __init__(self, html_text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: dict[str, list[str]] = {}  # tag -> texts of its elements
        self._open: list[tuple[str, list[str]]] = []
        self.feed(html_text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("img", "meta", "br", "wbr"):
            self._open.append((tag, []))

    def handle_endtag(self, tag):
        if tag in ("img", "meta", "br", "wbr"):
            return
        name, parts = self._open.pop()
        assert name == tag, (name, tag)
        self.text.setdefault(tag, []).append("".join(parts))

    def handle_data(self, data):
        for _, parts in self._open:
            parts.append(data)


def test_markdown_renders_one_heading_one_row_per_method_and_the_text_verbatim(hostile_run):
    out, boards, method = hostile_run
    (board,) = boards
    md = (out / "leaderboard.md").read_bytes().decode()
    rendered = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(md)
    doc = Tags(rendered)
    assert {t for t, _ in doc.tags} <= {"h2", "table", "thead", "tbody", "tr", "th", "td",
                                        "strong", "ul", "li", "p"}  # no script, link, em, code
    assert doc.text["h2"] == [one_line(board.title).strip()]
    assert len(doc.text["tr"]) == 1 + len(board.methods())
    head = ["method", *(f"{one_line(i.name).strip()} {tables.arrow(i)}" for i in board.infos)]
    assert doc.text["th"] == head
    cells = doc.text["td"]
    assert len(cells) == len(board.methods()) * len(head)  # every row has the header's width
    assert cells[::len(head)] == [one_line(m).strip() for m in board.methods()]
    assert [t.strip() for t in doc.text["li"]] == [one_line(n).strip() for n in board.notes]
    # And the raw file: every line a heading, a table row, a note or blank.
    lines = md.splitlines()
    assert [line for line in lines if line.startswith("#")] == [lines[0]]
    assert all(line.startswith(("## ", "| ", "|---", "- ")) or not line for line in lines)


def tex_tokens(text: str) -> list[tuple[int, str]]:
    """(line, token) for control sequences, &, $, braces and row ends, as TeX reads them with
    LaTeX's catcodes: a % comment runs to the end of its line, unread."""
    out = []
    for n, line in enumerate(text.split("\n"), 1):
        i = 0
        while i < len(line):
            ch = line[i]
            if ch == "%":
                break
            if ch == "\\":
                j = i + 1
                while j < len(line) and line[j].isalpha():
                    j += 1
                j = max(j, i + 2)
                out.append((n, line[i:j]))
                i = j
                continue
            if ch in "&${}^~#_":
                out.append((n, ch))
            i += 1
    return out


TEX_ALLOWED = {r"\begin", r"\end", r"\toprule", r"\midrule", r"\bottomrule", r"\textbf",
               r"\centering", r"\caption", r"\label", r"\resizebox", r"\ifdim", r"\width",
               r"\textwidth", r"\else", r"\fi", r"\scriptsize",
               r"\uparrow", r"\downarrow", r"\pm", r"\textbackslash", r"\textasciitilde",
               r"\textasciicircum", r"\textless", r"\textgreater", r"\textbar", r"\\", r"\&",
               r"\%", r"\$", r"\#", r"\_", r"\{", r"\}", "&", "$", "{", "}"}


def test_latex_has_no_live_control_sequence_from_the_input(hostile_run):
    out, boards, _ = hostile_run
    (board,) = boards
    tex = (out / "leaderboard.tex").read_bytes().decode()
    tokens = tex_tokens(tex)
    assert {t for _, t in tokens} <= TEX_ALLOWED  # no \input, \lccode, \lowercase, ^, #, _
    lines = tex.split("\n")
    assert lines[1] == "% " + one_line(board.title)  # the title stays inside its comment
    assert [line for line in lines if line.startswith("%")] == lines[:2]
    (caption,) = [line for line in lines if line.startswith(r"\caption{")]
    assert caption.startswith(r"\caption{" + tex_text(board.title) + ". ")  # escaped as text
    (label,) = [line for line in lines if line.startswith(r"\label{")]
    assert re.fullmatch(r"\\label\{tab:full-[a-z0-9-]+\}", label)
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert len(body) == len(board.methods())
    depth = 0  # braces balance over the file, never below zero: no text closes a group
    for n, line in enumerate(lines, 1):
        row = [t for m, t in tokens if m == n]
        for t in row:
            depth += {"{": 1, "}": -1}.get(t, 0)
            assert depth >= 0
        assert row.count("$") % 2 == 0, line
        # \resizebox{..}{!}{% opens the box that `\end{tabular}}` closes
        assert depth == (1 if lines.index(r"\begin{tabular}{l" + "r" * len(board.infos) + "}")
                         <= n - 1 < lines.index(r"\end{tabular}}") or line.endswith("{%")
                         else 0), line
        if line in body or line.endswith(r" \\"):
            assert row.count("&") == len(board.infos) and line.endswith(r" \\"), line


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_compiles_and_reads_no_file(hostile_run, tmp_path):
    out, _, _ = hostile_run
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{booktabs,graphicx}"
                   "\\begin{document}\n\\input{" + str(out / "leaderboard.tex") + "}\n"
                   "\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-no-shell-escape", "-interaction=nonstopmode",
                           "-halt-on-error", doc.name], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    log = (tmp_path / "doc.log").read_bytes().decode()
    # The title is printed (escaped) in the caption; the file is never opened or read.
    assert "(/etc/passwd" not in log and "root:" not in log


def test_csv_reads_back_row_for_row_with_no_formula(hostile_run):
    out, boards, method = hostile_run
    text = (out / "leaderboard.csv").read_bytes().decode()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    expected = pd.concat([tables.long_frame(b) for b in boards])
    assert rows[0] == list(expected.columns)
    assert len(rows) == 1 + len(expected) == 1 + len(pd.read_csv(io.StringIO(text)))
    assert all(len(r) == len(rows[0]) for r in rows)
    title = boards[0].title.replace("\r\n", "\n")
    assert {r[0] for r in rows[1:]} == {"'" + title}  # the one table, as text
    assert [(r[1], r[2]) for r in rows[1:]] == [
        (m.replace("\r\n", "\n"), x.replace("\r\n", "\n"))
        for m, x in zip(expected["method"], expected["metric"])]
    for r in rows[1:]:
        for cell in r:
            if cell.startswith(("=", "+", "-", "@", "\t", "\r", "\n")):
                float(cell)  # only numbers may start like a formula


def test_compare_markdown_keeps_its_table_shape(hostile_run):
    out, boards, _ = hostile_run
    md = compare.markdown(compare.compare(out, out))
    doc = Tags(MarkdownIt("commonmark", {"html": True}).enable("table").render(md))
    assert {t for t, _ in doc.tags} <= {"h1", "h2", "p", "code", "br", "ul", "li", "table",
                                        "thead", "tbody", "tr", "th", "td", "strong"}
    assert len(doc.text["h2"]) == 5  # Images, Specs, Scorers, Leaderboard cells, Verdict
    n_cells = len(pd.concat([tables.long_frame(b) for b in boards])) - 2 * 2  # no timing cells
    assert len(doc.text["tr"]) == 1 + n_cells
    assert len(doc.text["td"]) == 8 * n_cells
    # The table's name as the run named it (the CSV's ' formula guard undone; CRLF read as LF).
    assert set(doc.text["td"][::8]) == {one_line(boards[0].title.replace("\r\n", "\n")).strip()}


def test_html_page_shows_the_text_and_no_injected_element(hostile_run):
    out, boards, method = hostile_run
    doc = Tags((out / "report" / "index.html").read_bytes().decode())
    for tag, attrs in doc.tags:
        assert tag not in ("script", "iframe", "object", "svg"), tag
        assert not any(a.startswith("on") for a in attrs), attrs
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
        if tag == "a":  # the contents' links within the page only
            assert set(attrs) == {"href"} and attrs["href"].startswith(("#board-", "#full", "#side-effects"))
    n_img = sum(t == "img" for t, _ in doc.tags)
    assert n_img > 0 and len(doc.text["figcaption"]) == len(doc.text["figure"]) == n_img
    captions = doc.text["caption"]
    for b in boards:  # the headline and the full table, on screen and in print
        assert captions.count(f"Headline: {b.title}") == 2 and captions.count(b.title) == 1
        assert any(c.startswith(b.title + " (columns 1–") for c in captions)  # print
    assert ATTACK in doc.text["td"]  # the prompt in the per-prompt drill-down, verbatim
    assert {t for t in doc.text["th"] if t.startswith("sld-strong")} == {method}


def test_html_page_escapes_warnings_skipped_entries_and_the_manifest():
    from bench.manifest import GridRecord, Manifest, ModelRecord
    from bench.spec import RunSpec

    manifest = Manifest(created=ATTACK, spec=RunSpec(), model=ModelRecord(ATTACK, ATTACK),
                        height=8, width=8, methods={}, skipped_methods={}, prompt_sets=(),
                        grid=GridRecord(0, None), device=ATTACK, versions={}, git_commit=ATTACK)
    text = page.render(manifest, [], [], {}, {}, {ATTACK: ATTACK}, {ATTACK: ATTACK}, [],
                       {ATTACK: [ATTACK]})
    doc = Tags(text)
    assert {t for t, _ in doc.tags} == {"html", "head", "meta", "title", "style", "body", "h1",
                                        "h2", "h3", "p", "a", "code", "ul", "li", "table",
                                        "caption", "tr", "th", "td"}
    assert f"{ATTACK} (fingerprint {ATTACK})" in doc.text["td"]  # the settings table
    assert doc.text["li"].count(ATTACK) == 1  # the warning
    assert f"method {ATTACK}: {ATTACK}" in doc.text["li"]
    assert doc.text["code"][0] == ATTACK
