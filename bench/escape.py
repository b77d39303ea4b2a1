"""Escaping for every file format the report writes: one function per format and context.

Prompt-set names (file stems), prompt categories, method parameters and prompts are user text;
each writer passes every such string through one of these before it reaches a file another tool
reads (a Markdown renderer, LaTeX, a spreadsheet, a browser, matplotlib's mathtext). Ordinary
names (`parity_l2[skin]`, `sld-strong:warmup=5`, `occupations (guidance 7.5)`, notes such as
`only 12 prompts (< 25)`) come out unchanged, so committed leaderboards stay byte-identical.
"""
from __future__ import annotations

import html
import re

# Line breaks as any tool may see them (str.splitlines' set), tabs and other control characters:
# one space each, so no user string can end a table row, a heading, a list item or a comment.
_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def one_line(text: str) -> str:
    return _BREAKS.sub(" ", str(text))


# --- Markdown (CommonMark + GFM tables) ---------------------------------------------------------
# Always escaped: they end a cell (| and the \ that would un-escape our \|), start code spans,
# emphasis, strikethrough, math or headings. Escaped in context only, because ordinary names use
# them harmlessly: < and & when they would start a tag or an entity, ] when it would close a link
# text ("](", "]["), _ when it is not inside a word (snake_case names stay as they are).
_MD_ALWAYS = re.compile(r"[\\|*`~$#]")
_MD_CONTEXT = re.compile(r"<(?=[A-Za-z/!?])|&(?=[A-Za-z0-9#])|\](?=[(\[])"
                         r"|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# A block marker at the start of a list item (-, +, *, >, #, =, [ of a link definition, 1.):
_MD_LEAD = re.compile(r"^(?:([!-/:-@\[-`{-~])|(\d+)([.)]))")


def md_text(text: str) -> str:
    """Inline Markdown text for a table cell, a heading or a list item: renders as `text`, on one
    line, with no markup, link, HTML or block structure of its own."""
    text = one_line(text).strip()
    out = _MD_CONTEXT.sub(lambda m: "\\" + m.group(0), _MD_ALWAYS.sub(r"\\\g<0>", text))
    lead = _MD_LEAD.match(out)
    if lead and lead.group(1) and lead.group(1) != "\\":  # not already escaped above
        out = "\\" + out
    elif lead and lead.group(2):
        out = lead.group(2) + "\\" + out[len(lead.group(2)):]
    return out


def md_code(text: str) -> str:
    """An inline code span holding `text` literally (a fence longer than any backtick run)."""
    text = one_line(text)
    fence = "`" * (max((len(r) for r in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith(("`", " ")) or text.endswith(("`", " ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# --- LaTeX --------------------------------------------------------------------------------------
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def tex_text(text: str) -> str:
    """LaTeX text for a tabular cell: every special character printed, none active. A leading [
    or * is braced: after a row's \\\\ it would be read as that command's argument."""
    out = "".join(_TEX.get(ch, ch) for ch in one_line(text))
    return "{" + out[0] + "}" + out[1:] if out[:1] in ("[", "*") else out


def tex_comment(text: str) -> str:
    """Text after a % on one line: TeX skips the rest of the line unread, so only line breaks
    matter (a newline would end the comment and make what follows live)."""
    return one_line(text)


# --- CSV (OWASP "CSV injection") ----------------------------------------------------------------
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def csv_cell(text: str) -> str:
    """A string cell for a spreadsheet: a leading ' when it starts like a formula (=, +, -, @, tab,
    line break), so Excel and LibreOffice show text instead of evaluating it. Only for columns of
    strings: numeric columns keep their minus signs. A lone CR becomes LF, which the CSV writer
    quotes (unquoted, Python's csv reader would split the row there)."""
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_uncell(text: str) -> str:
    """The string `csv_cell` was given (its line breaks as LF), for readers of our own CSV."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


# --- HTML and matplotlib ------------------------------------------------------------------------
def html_text(text: str) -> str:
    """HTML text or a quoted attribute value: &, <, >, " and ' as character references."""
    return html.escape(str(text), quote=True)


def mpl_text(text: str) -> str:
    """A matplotlib label shown as written: every $ escaped, so a pair of them does not start
    mathtext (an unknown command such as \\input there makes savefig raise)."""
    return str(text).replace("$", r"\$")
