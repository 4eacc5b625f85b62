"""Diffusers scheduler configs (``scheduler_config.json``) read into a given method class.

The core's half of config I/O: :func:`build` maps a config's keys onto a class's options
(declared once, in :mod:`diffsched.core.options`), for ``Scheduler.from_config``. Which class
a config names is :mod:`diffsched.interop.config`'s business (the registry of methods
stands above the core).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import STEP_TIME, describe, from_diffusers, specs, to_diffusers

if TYPE_CHECKING:
    from .scheduler import Scheduler


def _read(source: dict | str | os.PathLike) -> dict[str, Any]:
    if isinstance(source, dict):
        return dict(source)
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"expected a config dict, a scheduler_config.json path or a model folder, "
            f"got: {type(source).__name__}"
        )
    path = Path(source)
    if path.is_dir():
        for candidate in (
            path / "scheduler" / "scheduler_config.json",
            path / "scheduler_config.json",
        ):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise FileNotFoundError(
                f"expected {path}/scheduler/scheduler_config.json or "
                f"{path}/scheduler_config.json, found neither"
            )
    config = load_json(path, "scheduler config")
    if not isinstance(config, dict):
        raise ValueError(f"expected a JSON object in {path}, got {type(config).__name__}")
    return config


def load_json(path: Any, what: str) -> Any:
    """The JSON value of the file ``path`` (a regular file of sane size), or a ValueError
    naming the path."""
    from .files import read_text

    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{path}: the JSON is nested too deeply to be a {what}") from None


# Keys some diffusers classes have, at the value that means "off": a class without the key
# behaves that way already, so a real model's config holding them loads without a warning
# (Stable Diffusion 1.5's PNDM config has clip_sample: false).
INERT_VALUES = {
    "clip_sample": False,
    "thresholding": False,
    "rescale_betas_zero_snr": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_flow_sigmas": False,
    "use_dynamic_shifting": False,
    "skip_prk_steps": True,
    "variance_type": None,
}


# boolean keys diffusers cannot take as null (it sums them to count the σ grids chosen)
NULL_REFUSED = frozenset({"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"})


def _null(owner: str, key: str, field: str, default: Any, spec: Any) -> Any:
    """What a JSON ``null`` under a diffusers key means. diffusers passes None to its class:
    its boolean keys are read by truth value there, so null means false (not our default);
    for any other key None is no value diffusers computes with, so it is an error here."""
    if isinstance(to_diffusers(field, default, spec), bool) and key not in NULL_REFUSED:
        return False
    raise ValueError(
        f"{owner} config key {key!r} is null: diffusers has no schedule for a null {key}; "
        f"give a value (ours: {field}, default {describe(default, 60)}) or drop the key"
    )


def build(cls: type, source: Any, overrides: dict, *, strict: bool) -> Scheduler:
    """``cls`` from a diffusers config: its keys mapped to our options. ``strict``: warn
    about keys ``cls`` lacks (the config names ``cls``); else drop them silently (another
    class's config, as in scheduler swapping)."""
    config = _read(source)
    name = cls.config_class_name()
    # deprecated keys diffusers still reads in place of another (DDIMInverseScheduler's
    # set_alpha_to_zero): the old key, when given, wins, as in diffusers' __init__
    for old, new in getattr(cls, "DIFFUSERS_ALIASES", {}).items():
        if config.get(old) is not None:
            config[new] = config[old]
        config.pop(old, None)
    by_key = {
        spec.diffusers_key: (field, default, spec)
        for field, (default, spec) in specs(cls).items()
        if spec.diffusers_key not in (None, STEP_TIME)
    }
    kwargs: dict[str, Any] = {}
    unknown = []
    # another class's config (scheduler swapping): a value of a shared key that this class
    # cannot take (DDPM's variance_type "fixed_small" for DPM-Solver, Euler's null
    # sigma_min for EDM) is dropped for this class's default, as diffusers drops the keys
    # another class left at its default (its _use_default_values); a warning names them
    # (a pipeline's in-memory config has no _class_name: possibly another class's)
    swapped = not strict and config.get("_class_name") != name
    dropped = []
    # diffusers' in-memory configs list the keys their class left at its default: diffusers
    # reads those as absent (the loading class's own default), and so do we
    defaults = config.get("_use_default_values") or ()
    for key, value in config.items():
        if key.startswith("_") or key in defaults:
            continue
        if key in by_key:
            field, default, spec = by_key[key]
            try:
                if value is None and not spec.nullable:
                    value = _null(name, key, field, default, spec)
                kwargs[field] = from_diffusers(name, key, field, value, default, spec)
            except ValueError:
                if not swapped:
                    raise
                dropped.append(key)
        elif key in cls.INERT_KEYS or (key in INERT_VALUES and value == INERT_VALUES[key]):
            continue
        else:
            unknown.append(key)
    if dropped:
        warnings.warn(
            f"{name} cannot take the value(s) of {sorted(dropped)} in the "
            f"{config.get('_class_name') or 'given'} config; its default(s) used",
            UserWarning,
            stacklevel=3,
        )
    if unknown and strict:
        warnings.warn(
            f"{name} has no option(s) {sorted(unknown)}; ignored", UserWarning, stacklevel=3
        )
    for private in ("_diffsched", "_diffsched_options"):  # ours: step-time, ours alone
        extra = config.get(private) or {}
        if not isinstance(extra, dict):
            raise ValueError(
                f"config key {private!r} must be a mapping, got: {describe(extra, 120)}"
            )
        # only the options that have no diffusers key travel there: one the file shows
        # under its own key must not be overridden unseen
        travels = {f: spec.diffusers_key for f, (_, spec) in specs(cls).items()
                   if spec.diffusers_key in (None, STEP_TIME)}  # fmt: skip
        if not strict:
            extra = {k: v for k, v in extra.items() if k in travels}
        visible = sorted(k for k in extra if k not in travels and k in specs(cls))
        if visible:
            keys = [specs(cls)[k][1].diffusers_key for k in visible]
            raise ValueError(
                f"{name} config key {private!r} holds {visible}, which the config gives under "
                f"diffusers' key(s) {keys}: set them there (only options diffusers lacks "
                f"travel under {private!r})"
            )
        kwargs.update(extra)
    kwargs.update(overrides)
    return cls(**kwargs)
