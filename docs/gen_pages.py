"""Writes the generated pages of the docs site at build time (mkdocs-gen-files, mkdocs.yml).

Nothing here is committed output: each build regenerates, from the code and the READMEs,

* ``index.md``: README.md, its scheduler table replaced by the full one of
  ``diffsched.methods.ALL``, less the sections that other pages show: "How it works"
  (engine.md) and "Accuracy", "Fewer model calls", "Parity", "Speed" (bench.md);
* ``bench.md``: README.md's "Accuracy", "Fewer model calls", "Parity" and "Speed", then
  benchmarks/README.md;
* ``schedulers/index.md`` and ``schedulers/<Class>.md``: one page per class of
  ``diffsched.methods.ALL`` (mkdocstrings renders the class and its module; the options
  table comes from ``diffsched.core.options.specs``);
* the ``<!-- gen:NAME -->`` markers of the hand-written pages (migration.md, engine.md),
  replaced by the tables of :data:`MARKERS`.

A README section renamed or a marker with no table fails the build, loudly; the nav's
"Schedulers" section is filled from ``diffsched.methods.CLASSES`` by ``hooks.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable
from pathlib import Path

import mkdocs_gen_files
import numpy as np
from markdown.extensions.toc import slugify

import diffsched as ds
from diffsched.core.options import STEP_TIME, Spec, specs
from diffsched.diffusers import _STEP_KWARG as STEP_KWARG
from diffsched.interop.config import INERT_VALUES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CLASSES = ds.methods.CLASSES


# -- helpers ---------------------------------------------------------------------------------


def cell(text: str) -> str:
    """Text made safe for a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;")


def code(value: object) -> str:
    return f"`{value}`"


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def summary(cls: type) -> str:
    """The first paragraph of a class's hand-written docstring, on one line."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    first = doc.split("\n\n", 1)[0]
    return " ".join(first.split()).replace("``", "`")


def page(cls: type) -> str:
    """The file name of a class's page, relative to docs/."""
    return f"schedulers/{cls.__name__}.md"


def link(cls: type, folder: str = "schedulers/") -> str:
    """A link to a class's page from a page in docs/ (or, with ``folder=""``, in its folder)."""
    return f"[`{cls.__name__}`]({folder}{cls.__name__}.md)"


def allowed(default: object, spec: Spec, annotation: str) -> str:
    """The values an option takes, with diffusers' spelling where it differs."""
    if annotation == "None":
        return "`None` only"
    if spec.choices is not None:
        parts = []
        for choice in spec.choices:
            theirs = None
            if spec.diffusers_values and choice in spec.diffusers_values:
                theirs = spec.diffusers_values[choice]
            elif spec.to_diffusers is not None and spec.diffusers_key not in (None, STEP_TIME):
                theirs = spec.to_diffusers(choice)
            if theirs is not None and theirs != choice:
                parts.append(f"`{choice}` (`{theirs!r}`)")
            else:
                parts.append(f"`{choice}`")
        out = ", ".join(parts)
    elif isinstance(default, bool):
        out = "`True`, `False`"
    elif spec.low is not None or spec.high is not None:
        lo = "-∞" if spec.low is None else f"{spec.low:g}"
        hi = "∞" if spec.high is None else f"{spec.high:g}"
        kind = "integer" if isinstance(default, int) else "number"
        left = "(" if spec.low_open or spec.low is None else "["
        right = ")" if spec.high_open or spec.high is None else "]"
        out = f"{kind} in {left}{lo}, {hi}{right}"
    elif annotation.startswith("tuple[int"):
        out = "list of integers"
    elif annotation.startswith("tuple["):
        out = "list of numbers"
    else:
        out = type(default).__name__
    if spec.nullable and "None" not in out:
        out += ", or `None`"
    return out


def diffusers_key(name: str, spec: Spec) -> str:
    if spec.diffusers_key == STEP_TIME:
        return f"`step({STEP_KWARG.get(name, name)}=...)`"
    if spec.diffusers_key is None:
        return "(ours only)"
    return code(spec.diffusers_key)


def default_text(default: object) -> str:
    if isinstance(default, float) and math.isinf(default):
        return code("-inf" if default < 0 else "inf")
    return code(repr(default))


def options_table(cls: type) -> str:
    annotations = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    rows = [
        [code(name), diffusers_key(name, spec), default_text(default),
         cell(allowed(default, spec, annotations[name])), cell(spec.doc)]
        for name, (default, spec) in specs(cls).items()
    ]  # fmt: skip
    return table(["option", "diffusers", "default", "values (diffusers' spelling)", "what"], rows)


def classes_using(users: list[type]) -> str:
    if len(users) == len(CLASSES):
        return "every class"
    return ", ".join(link(cls) for cls in users)


# -- README sections -------------------------------------------------------------------------

README = ROOT / "README.md"
BENCH_README = ROOT / "benchmarks" / "README.md"
# README sections with a page of their own; every other one goes to the home page, in order
BENCH_SECTIONS = ("Accuracy", "Fewer model calls", "Parity", "Speed")
ENGINE_SECTION = "How it works"  # the start of its heading


def sections(path: Path) -> tuple[str, dict[str, str]]:
    """(text before the first ``## `` heading, {heading: body}) of a Markdown file."""
    parts = re.split(r"^## (.+)\n", path.read_text(encoding="utf-8"), flags=re.M)
    head, rest = parts[0], parts[1:]
    return head, {rest[i].strip(): rest[i + 1] for i in range(0, len(rest), 2)}


def section(found: dict[str, str], name: str, path: Path = README) -> tuple[str, str]:
    """(heading, body) of the section whose heading starts with ``name``."""
    for heading, body in found.items():
        if heading == name or heading.startswith(name):
            return heading, body
    raise SystemExit(f"docs/gen_pages.py: {path.name} has no section '## {name}...'")


def page_of(heading: str) -> str:
    """The page that shows the README section ``heading``."""
    if heading.startswith(BENCH_SECTIONS):
        return "bench.md"
    if heading.startswith(ENGINE_SECTION):
        return "engine.md"
    return "index.md"


def for_site(text: str) -> str:
    """README Markdown with its links made relative to docs/."""
    text = text.replace("](docs/", "](")
    _, found = sections(README)
    for heading in found:
        anchor = slugify(heading, "-")
        text = text.replace(f"](#{anchor})", f"]({page_of(heading)}#{anchor})")
    return text


def diffusers_name(cls: type) -> str:
    return code(cls.DIFFUSERS_CLASS) if cls.DIFFUSERS_CLASS else "none (ours only)"


def write(name: str, text: str) -> None:
    with mkdocs_gen_files.open(name, "w") as f:
        f.write(text)


def scheduler_summary_table(folder: str = "schedulers/") -> str:
    rows = [
        [link(cls, folder), cell(summary(cls)), diffusers_name(cls),
         str(cls.ORDER), str(cls.CALLS_PER_STEP)]
        for cls in CLASSES
    ]  # fmt: skip
    return table(["class", "method", "diffusers", "order", "calls per step"], rows, "lllrr")


def index_page() -> None:
    head, found = sections(README)
    # the README's scheduler table gives way to the full one, linked to the class pages
    lines = head.splitlines(keepends=True)
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    if not rows:
        raise SystemExit("docs/gen_pages.py: README.md has no scheduler table before '## '")
    head = "".join(lines[: rows[0]]) + scheduler_summary_table() + "".join(lines[rows[-1] + 1 :])
    body = [head]
    for heading, text in found.items():
        if page_of(heading) == "index.md":
            body.append(f"## {heading}\n{text}")
    body.append(
        "## Where next\n\n"
        "- [The model input](model-input.md): why there is no `scale_model_input`.\n"
        "- [The engine](engine.md): every method is a table of coefficients.\n"
        "- [Scheduler API](api.md): `init`, `step`, `add_noise`, `to_config`, `sample`, "
        "`from_config`.\n"
        "- [Schedulers](schedulers/index.md): one page per class, with its options.\n"
        "- [Migrating from diffusers](migration.md) and "
        "[the diffusers adapter](diffusers-adapter.md).\n"
        "- [Benchmarks](bench.md): accuracy against the exact ODE solution, parity, speed.\n"
    )
    write("index.md", for_site("".join(body)))


def bench_page() -> None:
    _, found = sections(README)
    body = [
        "# Benchmarks\n\n"
        "The accuracy tables and the parity figures of the README, then the step-overhead "
        "figures of `benchmarks/README.md`.\n\n"
    ]
    for name in BENCH_SECTIONS:
        heading, text = section(found, name)
        body.append(f"## {heading}\n{text}")
    text = BENCH_README.read_text(encoding="utf-8")
    text = re.sub(r"^(#{2,5}) ", r"#\1 ", text, flags=re.M)  # under "Step overhead"
    text = re.sub(r"^# .*\n", "## Step overhead\n", text, count=1, flags=re.M)
    body.append(text)
    write("bench.md", for_site("".join(body)))


def readme_how_it_works() -> str:
    _, found = sections(README)
    return for_site(section(found, ENGINE_SECTION)[1].strip() + "\n")


# -- the scheduler pages ---------------------------------------------------------------------


def scheduler_pages() -> None:
    write(
        "schedulers/index.md",
        "# Schedulers\n\n"
        "Every class of `diffsched.methods.ALL` (and `OURS_ONLY`, the methods diffusers "
        "does not have), importable as `diffsched.<class>`. `order` is "
        "the method's order of accuracy, `calls per step` the model calls per interval of "
        "its grid. Each page lists the options with diffusers' key and the default; "
        "`diffsched list` prints the same from the command line.\n\n"
        + scheduler_summary_table(folder="")
        + "\nAll of them share the [scheduler API](../api.md): `init`, `step`, "
        "`init_noise_scale`, `add_noise`, `to_config`, `replace`.\n",
    )
    for cls in CLASSES:
        source = f"{cls.__module__}.{cls.__name__}"
        facts = [f"`diffsched.{cls.__name__}`", f"diffusers: {diffusers_name(cls)}"]
        facts += [f"order {cls.ORDER}", f"{cls.CALLS_PER_STEP} model call(s) per step"]
        default = cls()
        facts.append("deterministic" if default.deterministic else "stochastic")
        facts[-1] += " by default"
        text = (
            f"# {cls.__name__}\n\n{' · '.join(facts)}\n\n"
            f"::: {source}\n"
            "    options:\n"
            "      show_root_heading: false\n"
            "      show_root_toc_entry: false\n"
            "      show_signature: false\n"
            "      members: false\n\n"
            "## Options\n\n"
            f"Keyword options of `{cls.__name__}(...)`: the config is immutable "
            '(`sched.replace(name=value)` makes a changed copy). "diffusers" is the key in '
            "diffusers' `scheduler_config.json` (`from_config` reads it, `to_config` writes "
            "it), or the keyword diffusers passes to `step`; values in brackets are diffusers' "
            "spelling where it differs. See also [migrating from diffusers](../migration.md).\n\n"
            + options_table(cls)
            + f"\n## The method: `{cls.__module__}`\n\n"
            f"::: {cls.__module__}\n"
            "    options:\n"
            "      show_root_heading: false\n"
            "      show_root_toc_entry: false\n"
            "      members: false\n"
        )
        write(page(cls), text)


# -- tables for the hand-written pages -------------------------------------------------------


def migration_classes() -> str:
    rows = [[code(cls.DIFFUSERS_CLASS), link(cls)] for cls in ds.methods.ALL]
    return table(["diffusers", "diffsched"], rows)


def _options_by(keep: Callable[[str, Spec], bool]) -> dict[tuple, list[type]]:
    found: dict[tuple, list[type]] = {}
    for cls in CLASSES:
        for name, (_, spec) in specs(cls).items():
            if keep(name, spec):
                found.setdefault((spec.diffusers_key, name), []).append(cls)
    return found


def migration_option_names() -> str:
    found = _options_by(lambda name, spec: spec.diffusers_key not in (None, STEP_TIME, name))
    rows = [
        [code(key), code(name), classes_using(users)]
        for (key, name), users in sorted(found.items())
    ]
    return table(["diffusers config key", "diffsched option", "classes"], rows)


def migration_step_options() -> str:
    found = _options_by(lambda name, spec: spec.diffusers_key == STEP_TIME)
    rows = [
        [code(f"step({STEP_KWARG.get(name, name)}=...)"), code(name),
         classes_using(users)]
        for (_, name), users in sorted(found.items(), key=lambda kv: kv[0][1])
    ]  # fmt: skip
    return table(["diffusers `step` keyword", "diffsched option", "classes"], rows)


def migration_option_values() -> str:
    found: dict[tuple, list[type]] = {}
    for cls in CLASSES:
        for name, (_, spec) in specs(cls).items():
            if spec.diffusers_key in (None, STEP_TIME):
                continue
            pairs = []
            if spec.diffusers_values:
                pairs = [(ours, theirs) for ours, theirs in spec.diffusers_values.items()]
            elif spec.choices and spec.to_diffusers is not None:
                pairs = [(ours, spec.to_diffusers(ours)) for ours in spec.choices]
            for ours, theirs in pairs:
                if ours != theirs and (spec.choices is None or ours in spec.choices):
                    found.setdefault((spec.diffusers_key, name, ours, theirs), []).append(cls)
    rows = [
        [f"`{key}={theirs!r}`", f"`{name}={ours!r}`", classes_using(users)]
        for (key, name, ours, theirs), users in found.items()
    ]
    return table(["diffusers", "diffsched", "classes"], rows)


def migration_ours_only() -> str:
    found = _options_by(lambda name, spec: spec.diffusers_key is None)
    rows = [
        [code(name), classes_using(users), cell(specs(users[0])[name][1].doc)]
        for (_, name), users in found.items()
    ]
    return table(["diffsched option", "classes", "what"], rows)


def migration_inert_keys() -> str:
    rows = [
        [link(cls), ", ".join(code(k) for k in sorted(cls.INERT_KEYS))]
        for cls in CLASSES
        if cls.INERT_KEYS
    ]
    inert = ", ".join(f"`{k}={v!r}`" for k, v in INERT_VALUES.items())
    return (
        table(["class", "diffusers keys accepted and dropped"], rows)
        + f'\nAny class also accepts, silently, these keys at their "off" value: {inert}.\n'
    )


def _tableau_table(expression: str, sched: ds.Scheduler, num_steps: int) -> str:
    tab = sched.tableau(num_steps)
    prog = sched.program(num_steps)
    columns = [("timestep", tab.timesteps), ("x0_sample", tab.x0_sample),
               ("x0_output", tab.x0_output)]  # fmt: skip
    for (operand, lag), col in tab.update.items():
        columns.append((f"{operand}, lag {lag}", col))
    if tab.noise is not None:
        columns.append(("noise", tab.noise))
    if tab.input_scale is not None:
        columns.append(("input_scale", tab.input_scale[:-1]))
    n = tab.num_calls

    def fmt(value: float) -> str:
        return f"{value:.6g}"

    rows = [
        [str(i)]
        + [fmt(np.broadcast_to(np.asarray(col, np.float64), (n,))[i]) for _, col in columns]
        for i in range(n)
    ]
    header = ["call"] + [name for name, _ in columns]
    return (
        f"`{expression}.tableau({num_steps})`, compiled to {prog.num_slots} history "
        f"slot(s):\n\n" + table(header, rows, "r" * len(header))
    )


def engine_tableaus() -> str:
    return (
        _tableau_table("ds.Euler()", ds.Euler(), 4)
        + "\n"
        + _tableau_table("ds.DPMSolverMultistep()", ds.DPMSolverMultistep(), 4)
    )


MARKERS: dict[str, Callable[[], str]] = {
    "migration-classes": migration_classes,
    "migration-option-names": migration_option_names,
    "migration-step-options": migration_step_options,
    "migration-option-values": migration_option_values,
    "migration-ours-only": migration_ours_only,
    "migration-inert-keys": migration_inert_keys,
    "engine-tableaus": engine_tableaus,
    "readme-how-it-works": readme_how_it_works,
}


def fill_markers(name: str) -> None:
    text = (DOCS / name).read_text(encoding="utf-8")

    def replace(match: re.Match) -> str:
        key = match.group(1)
        if key not in MARKERS:
            raise SystemExit(f"docs/gen_pages.py: {name} has an unknown marker {key!r}")
        return MARKERS[key]()

    filled = re.sub(r"<!-- gen:([\w-]+) -->\n", replace, text)
    write(name, filled)


index_page()
bench_page()
scheduler_pages()
for hand_written in ("migration.md", "engine.md"):
    fill_markers(hand_written)
