"""MkDocs hooks (mkdocs.yml ``hooks:``): the nav's "Schedulers" section, from the registry.

The section holds ``schedulers/index.md`` and, per family of
:data:`diffsched.core.families.FAMILIES`, the page of each class of
:data:`diffsched.methods.CLASSES` (written by ``gen_pages.py``), so a new class has its nav
entry without an edit here or in mkdocs.yml.
"""

from __future__ import annotations

from diffsched.core.families import FAMILIES
from diffsched.methods import CLASSES

SECTION = "Schedulers"


def scheduler_nav() -> list:
    """The "Schedulers" section's entries: the index page, then one group per family."""
    groups = [
        {family: [f"schedulers/{cls.__name__}.md" for cls in CLASSES if family == cls.FAMILY]}
        for family in FAMILIES
    ]
    return ["schedulers/index.md", *(g for g in groups if next(iter(g.values())))]


def on_config(config, **kwargs):
    for entry in config["nav"]:
        if isinstance(entry, dict) and SECTION in entry:
            entry[SECTION] = scheduler_nav()
            return config
    raise ValueError(f"mkdocs.yml's nav has no {SECTION!r} section to fill")
