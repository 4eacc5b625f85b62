"""Options declared once: the default, the doc, the check and the diffusers key, together.

Every scheduler option is a dataclass field made by :func:`option`. Its metadata holds an
:class:`Spec`, from which the scheduler validates the value, maps it to and from diffusers'
``scheduler_config.json`` and writes the "Options" section of its docstring, so that the
four cannot drift apart (the habit of Bumblebee's option lists).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

INT_LIMIT = 2**31 - 1  # the range of integer options without a bound of their own
STEP_TIME = "<step>"  # diffusers passes the option to ``step``: it travels under "_diffsched"


@dataclass(frozen=True)
class Spec:
    """What one option is: its doc, its allowed values and its diffusers key.

    Attributes:
        doc: one paragraph: what the option controls (and the paper's equation).
        diffusers_key: the diffusers config key, :data:`STEP_TIME` for options diffusers
            passes to ``step`` (they travel under ``"_diffsched"``), None for ours alone.
        choices: the allowed strings (string options).
        diffusers_values: our value -> diffusers' value, where the spellings differ.
        low, high, low_open, high_open: the allowed range of a number (inclusive unless open).
        nullable: whether None is allowed (and means "not given").
        to_diffusers, from_diffusers: conversions where a value is not a mere respelling.
    """

    doc: str
    diffusers_key: str | None = None
    choices: tuple[str, ...] | None = None
    diffusers_values: Mapping[Any, Any] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    to_diffusers: Callable[[Any], Any] | None = None
    from_diffusers: Callable[[Any], Any] | None = None


def option(default: Any, doc: str, diffusers_key: str | None = None, **spec: Any) -> Any:
    """A dataclass field for a scheduler option; see :class:`Spec` for ``spec``."""
    return field(default=default, metadata={"spec": Spec(doc, diffusers_key, **spec)})


def specs(cls_or_obj: Any) -> dict[str, tuple[Any, Spec]]:
    """{option name: (default, spec)} for every declared option, in declaration order (a
    new dict; the class's list is computed once)."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    return dict(_class_specs(cls))


@functools.cache
def _class_specs(cls: type) -> dict[str, tuple[Any, Spec]]:
    out = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("spec")
        if spec is not None:
            out[f.name] = (f.default, spec)
    return out


def describe(value: Any, limit: int = 200) -> str:
    """A value for a message: its repr, long tuples elided, cut to about ``limit``
    characters (a huge value is never echoed whole)."""
    if isinstance(value, tuple) and len(value) >= 6:
        return "(...)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 600:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except Exception:  # a value whose repr fails is still reported
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = f"{text[: limit - 30]}... ({type(value).__name__}, {len(text)} characters)"
    return text


def check(owner: str, name: str, value: Any, default: Any, spec: Spec) -> Any:
    """The validated value of option ``name`` (its type from the default), or an error.

    Booleans take only booleans; integers only integers (not booleans, not 2.0); numbers
    any finite real within the range; strings one of the choices. Errors name the owner,
    the option, the value and what is allowed.
    """
    where = f"{owner} option {name}"
    if value is None and spec.nullable:
        return None
    if isinstance(default, bool):
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"{where} expects True or False, got: {describe(value)}")
        return bool(value)
    if isinstance(default, int):
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise TypeError(f"{where} expects an integer, got: {describe(value)}")
        value = int(value)
    elif isinstance(default, float) or (default is None and spec.low is not None):
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
            raise TypeError(f"{where} expects a number, got: {describe(value)}")
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"{where} expects a number, got: nan")
    elif isinstance(default, str) or spec.choices is not None:
        if not isinstance(value, str) or value not in (spec.choices or ()):
            hint = ""
            if spec.diffusers_values:
                ours = {v: k for k, v in spec.diffusers_values.items() if v != k}
                if isinstance(value, str) and value in ours:
                    hint = f" ({value!r} is diffusers' name for {name}={ours[value]!r})"
            raise ValueError(f"{where} must be one of {spec.choices}, got: {describe(value)}{hint}")
        return value
    else:
        return value
    if isinstance(default, int) or spec.low is not None or spec.high is not None:
        # integers (counts, offsets, orders) stay within int32: no option needs more, and
        # nothing downstream overflows
        unbounded = INT_LIMIT if isinstance(default, int) else math.inf
        lo = -unbounded if spec.low is None else spec.low
        hi = unbounded if spec.high is None else spec.high
        ok = (lo < value if spec.low_open else lo <= value) and (
            value < hi if spec.high_open else value <= hi
        )
        if not ok:
            bracket = ("(" if spec.low_open else "[", ")" if spec.high_open else "]")
            raise ValueError(
                f"{where} must lie in {bracket[0]}{lo}, {hi}{bracket[1]}, got: {describe(value)}"
            )
    return value


def to_diffusers(name: str, value: Any, spec: Spec) -> Any:
    if spec.to_diffusers is not None:
        return spec.to_diffusers(value)
    if spec.diffusers_values is not None and value in spec.diffusers_values:
        return spec.diffusers_values[value]
    return value


def from_diffusers(owner: str, key: str, name: str, value: Any, default: Any, spec: Spec) -> Any:
    """Our value for diffusers' ``value`` of ``key``, checked as strictly as a keyword."""
    if spec.from_diffusers is not None:
        try:
            return spec.from_diffusers(value)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{owner} config key {key!r}: {err}") from None
    if spec.diffusers_values is not None:
        inverse = {v: k for k, v in spec.diffusers_values.items()}
        if isinstance(value, str) and value in inverse:
            return inverse[value]
        allowed = sorted(str(v) for v in spec.diffusers_values.values())
        raise ValueError(
            f"{owner} config key {key!r}: unsupported {name} {describe(value)}; "
            f"supported: {allowed}"
        )
    try:
        return check(owner, name, value, default, spec)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{owner} config key {key!r}: {err}") from None


def options_doc(cls: type) -> str:
    """The "Options" section of a scheduler's docstring, generated from its fields."""
    lines = ["Options (diffusers' key in brackets; default after the name):"]
    for name, (default, spec) in specs(cls).items():
        key = spec.diffusers_key
        where = (
            " [passed to diffusers' step]"
            if key == STEP_TIME
            else ""
            if key is None
            else f" [``{key}``]"
        )
        lines.append(f"    {name} = {describe(default)}{where}: {spec.doc}")
    return "\n".join(lines)


def with_default(owner: type, name: str, default: Any) -> Any:
    """The option ``name`` declared on ``owner``, with another default (same doc and spec)."""
    f = owner.__dataclass_fields__[name]  # type: ignore[attr-defined]
    return field(default=default, metadata=f.metadata)


def diffusers_options(cls: type) -> list[tuple[str, str, Any, Spec]]:
    """(our name, diffusers key, default, spec) of every option kept in diffusers' config."""
    return [
        (name, spec.diffusers_key, default, spec)
        for name, (default, spec) in specs(cls).items()
        if spec.diffusers_key not in (None, STEP_TIME)
    ]
