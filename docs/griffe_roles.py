"""A griffe extension for the docs site: the reST bits of the docstrings as Markdown, and
their formulas typeset.

The docstrings cross-reference with Sphinx roles (``:class:`Spec```, ``:func:`~a.b.c```)
and open literal blocks with a line ending in ``::``; Markdown would print both. This
rewrites each role to the inline code of its target (``~`` keeps the last dotted part, as
Sphinx does) and ``::`` at a line's end to ``:`` (the indented block below is a code block
in Markdown too). Loaded by mkdocstrings (mkdocs.yml); the library's code is untouched.

Formulas. The docstrings write each equation as an indented line of plain text (Unicode
Greek, ``sqrt(...)``, ``x_{t-1}``, ``ᾱ``, ``x̂_0``, its number in brackets at the end), which
reads well in ``help()`` and in the source. On the site each such block becomes display math
(``$$ ... $$``, typeset by MathJax through ``pymdownx.arithmatex``): one equation per line
(a line that starts with an operator continues the one above), the bracketed number as its
tag, ``sqrt(a)`` as a root, words as text, accents (``x̂``, ``x̃``, ``ᾱ``) as TeX accents. A
block that is code, or that does not convert cleanly (:func:`to_tex` returns None), stays a
code block.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|data|mod|attr|obj|exc):`(~?)([^`]+)`")
LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.M)


def _plain(match: re.Match) -> str:
    target = match.group(2)
    if match.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"``{target}``"


class RestAsMarkdown(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = ROLE.sub(_plain, obj.docstring.value)
            text = LITERAL_BLOCK.sub(":", text)
            obj.docstring.value = typeset_formulas(text)


# -- formulas -------------------------------------------------------------------------------

MATHY = re.compile("[σᾱαβεθλρφτμνγηδπΣΠ∫²³√≈≤≥·ℓ\u0302\u0303\u0304]|_\\{|\\^\\{")
CODE_HINTS = re.compile(
    r"\bimport\b|>>>|\bds\.|\bsched\.|\bpipe\.|\bprint\(|\bdef\b|\breturn\b"
    r"|^\s*\w+: |\bfor .* in .*:"
)
FUNCTIONS = {"exp": r"\exp", "log": r"\log", "min": r"\min", "max": r"\max", "sin": r"\sin",
             "cos": r"\cos", "tan": r"\tan", "softmax": r"\operatorname{softmax}",
             "atan2": r"\operatorname{atan2}", "erf": r"\operatorname{erf}"}  # fmt: skip
SYMBOLS = {"²": "^2", "³": "^3", "·": r"\cdot ", "∫": r"\int ", "Σ": r"\sum ", "Π": r"\prod ",
           "≠": r"\ne ", "→": r"\to ", "∞": r"\infty ", "…": r"\ldots ", "ℓ": r"\ell ",
           "%": r"\%", "#": r"\#", "&": r"\&"}  # fmt: skip
ACCENTS = {"\u0302": "hat", "\u0303": "tilde", "\u0304": "bar"}
PRECOMPOSED = {"ᾱ": r"{\bar{α}}", "ĥ": r"{\hat{h}}", "⌊": r"\lfloor ", "⌋": r"\rfloor "}
ALLOWED = re.compile(r"^[\x20-\x7eα-ωΑ-Ωϵϑϕ∈∉≈≤≥±×∂∇⊙∘⟨⟩−⌊⌋]*$")
TAG = re.compile(r"^(.*?\S)\s{2,}\(([^()]{1,40})\)\s*$")


def _matching(text: str, start: int) -> int:
    """The index of the parenthesis closing the one at ``start`` (-1 if none)."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return -1


def _text(words: str) -> str:
    return r"\text{" + words + "}"  # MathJax's text mode shows _ as it is


def _math(line: str) -> str | None:
    """One formula line (no tag) as TeX, or None."""
    kept: list[str] = []  # finished TeX pieces, out of reach of the later rules

    def keep(tex: str) -> str:
        kept.append(tex)
        return f"\x01{len(kept) - 1}\x02"

    line = re.sub(r" {2,}", lambda m: keep(r" \qquad "), line.strip())  # the source's gaps
    line = re.sub(r"``([^`]+)``", lambda m: keep(_text(m.group(1))), line)
    for char, tex in PRECOMPOSED.items():
        line = line.replace(char, tex)
    for mark, accent in ACCENTS.items():  # x̂ -> \hat{x}
        line = re.sub(rf"([A-Za-zα-ωΑ-Ω]){mark}", rf"{{\\{accent}{{\1}}}}", line)
    if re.search("[\u0300-\u036f]", line):
        return None
    for char, tex in SYMBOLS.items():
        line = line.replace(char, tex)
    line = line.replace(">=", r"\ge ").replace("<=", r"\le ").replace("...", r"\ldots ")
    line = re.sub(r"<([^<>=]+)>", r"\\langle \1 \\rangle ", line)
    # sqrt(a) -> \sqrt{a}, innermost first
    while (i := line.rfind("sqrt(")) >= 0:
        j = _matching(line, i + 4)
        if j < 0:
            return None
        line = line[:i] + r"\sqrt{" + line[i + 5 : j] + "}" + line[j + 1 :]
    # identifiers with a word after the underscore: c_skip -> c_{\text{skip}}; a word
    # before it too: posterior_mean -> \text{posterior\_mean}
    line = re.sub(r"(?<![\\A-Za-z0-9])([A-Za-zα-ωΑ-Ω0-9]+)_([A-Za-z][A-Za-z0-9]+)\b",
                  lambda m: keep(_identifier(m.group(1), m.group(2))), line)  # fmt: skip
    # the other words (2+ letters, not TeX commands): functions, differentials, else text
    word = r"[A-Za-z][A-Za-z0-9']*[A-Za-z0-9]"
    line = re.sub(rf"(?<![\\A-Za-z]){word}(?:[ ,;]+{word})*(?![A-Za-z{{])",
                  lambda m: keep(_words(m.group(0))), line)  # fmt: skip
    line = re.sub(r" {2,}", " ", line)
    line = re.sub("\x01(\\d+)\x02", lambda m: kept[int(m.group(1))], line)
    line = re.sub("\x01(\\d+)\x02", lambda m: kept[int(m.group(1))], line)  # nested
    if line.count("{") != line.count("}") or not ALLOWED.match(line):
        return None
    return line


def _identifier(base: str, suffix: str) -> str:
    if len(base) > 1 and base.isascii() and base.isalpha():
        return _text(f"{base}_{suffix}")
    if len(suffix) <= 2 and set(suffix) <= set("ijklmnpqrst"):  # indices: w_ik
        return base + "_{" + suffix + "}"
    return base + "_{" + _text(suffix) + "}"


def _words(words: str) -> str:
    if words in FUNCTIONS:
        return FUNCTIONS[words]
    if re.fullmatch(r"d[a-zα-ω]", words):  # a differential: dx, du
        return words
    return _text(words)


def to_tex(block: list[str]) -> list[str] | None:
    """The display equations of a formula block (its lines, indent removed), or None."""
    lines: list[str] = []
    indent = len(block[0]) - len(block[0].lstrip())
    for raw in block:
        text = raw.strip()
        deeper = len(raw) - len(raw.lstrip()) > indent
        if lines and (text[:1] in "+=" or (deeper and text[:1] == "-")):  # continues
            lines[-1] = lines[-1].rstrip() + " " + text
        else:
            lines.append(raw.rstrip())
    equations = []
    for line in lines:
        tag = TAG.match(line)
        body, label = (tag.group(1), tag.group(2)) if tag else (line, None)
        tex = _math(body)
        if tex is None:
            return None
        if label is not None:
            if not ALLOWED.match(label.replace("ᾱ", "α")) or "{" in label or "\\" in label:
                return None
            tex += r" \tag{" + label.replace("ᾱ", "α") + "}"
        equations.append(tex)
    return equations


def typeset_formulas(text: str) -> str:
    """Every indented formula block of a docstring as ``$$ ... $$`` display math."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        starts_block = lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip())
        if not starts_block:
            out.append(lines[i])
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].startswith("    "):
            j += 1
        block = lines[i:j]
        joined = "\n".join(block)
        tex = None
        if MATHY.search(joined) and not CODE_HINTS.search(joined):
            tex = to_tex([b[4:] for b in block])
        if tex is None:
            out.extend(block)
        else:
            for k, equation in enumerate(tex):
                if k:
                    out.append("")
                out.extend(["$$", equation, "$$"])
        i = j
    return "\n".join(out)
