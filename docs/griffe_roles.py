"""A griffe extension for the docs site: the reST bits of the docstrings as Markdown.

The docstrings cross-reference with Sphinx roles (``:class:`Spec```, ``:func:`~a.b.c```)
and open literal blocks with a line ending in ``::``; Markdown would print both. This
rewrites each role to the inline code of its target (``~`` keeps the last dotted part, as
Sphinx does) and ``::`` at a line's end to ``:`` (the indented block below is a code block
in Markdown too). Loaded by mkdocstrings (mkdocs.yml); the library's code is untouched.
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
            obj.docstring.value = LITERAL_BLOCK.sub(":", text)
