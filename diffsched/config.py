"""Reading diffusers scheduler configs (``scheduler_config.json``)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from .base import Scheduler
from .ddim import DDIM
from .lcm import LCM
from .pndm import PNDM

SCHEDULERS: dict[str, type[Scheduler]] = {cls.DIFFUSERS_CLASS: cls for cls in (DDIM, PNDM, LCM)}

# Keys of a diffusers class that cannot change its result, so are accepted and dropped:
# LCMScheduler has spacing keys that its set_timesteps never reads.
_INERT_KEYS = {"LCMScheduler": {"steps_offset", "timestep_spacing"}}


def _read(source: dict | str | os.PathLike) -> dict[str, Any]:
    if isinstance(source, dict):
        return dict(source)
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
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if not isinstance(config, dict):
        raise ValueError(f"expected a JSON object in {path}, got {type(config).__name__}")
    return config


def from_config(source: dict | str | os.PathLike, **overrides: Any) -> Scheduler:
    """A scheduler from a diffusers scheduler config.

    ``source`` is a config dict, a ``scheduler_config.json`` file, or a model folder holding
    ``scheduler/scheduler_config.json``. Keys are diffusers' own (``num_train_timesteps``,
    ``set_alpha_to_one``, ``skip_prk_steps``, ...). ``overrides`` are our option names and
    win over the file. Metadata keys (``_class_name``, ``_diffusers_version``, ...) are not
    options; keys the class does not have are reported in one warning.
    """
    config = _read(source)
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise ValueError(f"unsupported scheduler class {name!r}; supported: {sorted(SCHEDULERS)}")
    cls = SCHEDULERS[name]
    known = {option.diffusers_key: option for option in cls.OPTIONS}
    kwargs: dict[str, Any] = {}
    unknown = []
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in known:
            option = known[key]
            if value is None and option.name != "trained_betas":
                continue  # diffusers' "use the default"
            try:
                kwargs[option.name] = option.from_diffusers(value)
            except (ValueError, KeyError) as err:
                raise ValueError(f"{name} config key {key!r}: {err}") from None
        elif key not in _INERT_KEYS.get(name, set()):
            unknown.append(key)
    if unknown:
        warnings.warn(
            f"{name} has no option(s) {sorted(unknown)}; ignored", UserWarning, stacklevel=2
        )
    extra = config.get("_diffsched") or {}
    kwargs.update(extra)
    kwargs.update(overrides)
    return cls(**kwargs)
