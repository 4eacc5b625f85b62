"""One declaration per class: every list of classes derives from diffsched.methods.CLASSES.

A method class is registered by being defined in a module of ``diffsched.methods``; these
tests fail if any list that users or the other tests read lacks one: the top-level names,
``SCHEDULERS``, the command line, the docs' nav and pages, the README's table, the generic
test lists (engine, backends, jit, compile, purity, fuzz, config round trip).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import diffsched as ds
from diffsched import cli, methods
from diffsched.core.families import FAMILIES
from diffsched.core.scheduler import BaseScheduler

ROOT = Path(__file__).resolve().parents[1]
CLASSES = methods.CLASSES
NAMES = [cls.__name__ for cls in CLASSES]


def test_every_public_scheduler_class_of_the_methods_package_is_registered():
    """Scan the package independently of the registry's own discovery."""
    found = set()
    for info in pkgutil.iter_modules(methods.__path__):
        if info.name.startswith("_") or info.name == "kit":  # shared pieces, not methods
            continue
        module = importlib.import_module(f"diffsched.methods.{info.name}")
        for obj in vars(module).values():
            public = not getattr(obj, "__name__", "_").startswith("_")
            ours = getattr(obj, "__module__", None) == module.__name__
            if isinstance(obj, type) and issubclass(obj, BaseScheduler) and public and ours:
                found.add(obj)
    assert found == set(CLASSES)
    assert len(CLASSES) >= 25


@pytest.mark.parametrize("cls", CLASSES, ids=NAMES)
def test_a_class_is_everywhere(cls):
    name = cls.__name__
    assert getattr(ds, name) is cls and name in ds.__all__
    assert cls.FAMILY in FAMILIES
    if cls.DIFFUSERS_CLASS is None:
        assert cls in methods.OURS_ONLY and cls not in ds.SCHEDULERS.values()
    else:
        assert ds.SCHEDULERS[cls.DIFFUSERS_CLASS] is cls
    # the config round trip: from_config of its own config gives the class back
    assert type(ds.from_config(cls().to_config())) is cls
    if cls.CLI_NAME is not None:
        assert cli.SCHEDULERS[cls.CLI_NAME] is cls


def test_the_command_line_lists_exactly_the_classes_with_a_cli_name():
    assert set(cli.SCHEDULERS.values()) == {c for c in CLASSES if c.CLI_NAME is not None}


def test_the_generic_test_lists_cover_every_class():
    sys.path.insert(0, str(Path(__file__).parent))
    import test_engine
    import test_fuzz

    assert {type(s) for s, _ in test_engine.CASES.values()} == set(CLASSES)
    assert set(test_fuzz.CLASSES) == set(CLASSES)


def test_the_docs_nav_lists_every_class_under_its_family():
    sys.path.insert(0, str(ROOT / "docs"))
    hooks = pytest.importorskip("hooks")
    nav = hooks.scheduler_nav()
    pages = {}
    for group in nav[1:]:
        ((family, entries),) = group.items()
        for entry in entries:
            pages[entry] = family
    assert pages == {f"schedulers/{c.__name__}.md": c.FAMILY for c in CLASSES}


def test_the_readme_table_names_every_class():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| class | method | diffusers |") :]
    table = table[: table.index("\n\n")]
    named = set(re.findall(r"`([A-Za-z0-9]+)`", table))
    missing = [name for name in NAMES if name not in named]
    assert not missing, f"README's scheduler table lacks {missing}"


def test_the_comfyui_page_maps_every_sampler_name_to_its_class():
    """docs/comfyui.md's table: a row per ComfyUI sampler name, linking the class
    ``ds.from_comfy`` builds for it (the one hand-written table besides the README's)."""
    text = (ROOT / "docs" / "comfyui.md").read_text(encoding="utf-8")
    table = text[text.index("| ComfyUI sampler | diffsched class |") :]
    table = table[: table.index("\n\n")]
    rows = {}
    for line in table.splitlines()[2:]:
        names, cls = line.split("|")[1:3]
        for name in re.findall(r"`([a-z0-9_]+)`", names):
            rows[name] = cls
    missing = [name for name in ds.comfy.SAMPLERS if name not in rows]
    assert not missing, f"docs/comfyui.md's sampler table lacks {missing}"
    for name in ds.comfy.SAMPLERS:
        cls = type(ds.from_comfy(name)).__name__
        assert cls in rows[name] or "without `_cfg_pp`" in rows[name], (name, cls)


# diffusers' scheduler classes that are not ours, and why (the README says so)
NOT_OURS = {
    "AmusedScheduler": "discrete tokens",
    "BlockRefinementScheduler": "discrete tokens",
    "DiscreteDDIMScheduler": "discrete tokens",
    "EntropyBoundScheduler": "discrete tokens",
    "VQDiffusionScheduler": "discrete tokens",
    "RFD4ProteinaScheduler": "protein-specific",
}


def test_every_continuous_state_diffusers_class_is_ours():
    """Every scheduler class diffusers exports is one of ours, but the discrete-token ones
    and RFD4Proteina (the README's claim; a new diffusers class fails here)."""
    schedulers = pytest.importorskip("diffusers.schedulers")
    theirs = {n for n in dir(schedulers) if n.endswith("Scheduler") and n[0].isupper()}
    theirs -= {"KarrasDiffusionSchedulers"}  # an enum of names, not a class
    assert theirs - set(ds.SCHEDULERS) == set(NOT_OURS)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in NOT_OURS:
        assert name.removesuffix("Scheduler") in readme, name
