"""Reading diffusers scheduler configs (``scheduler_config.json``) into our schedulers."""

from __future__ import annotations

import os
from typing import Any

from ..core.config import INERT_VALUES, NULL_REFUSED, _read, build, load_json
from ..core.scheduler import Scheduler

__all__ = ["INERT_VALUES", "NULL_REFUSED", "build", "from_config", "load_json", "registry"]


def registry() -> dict[str, type[Scheduler]]:
    """{diffusers class name: our class}, for every method (our class name for the
    methods diffusers does not have)."""
    from .. import methods

    return {cls.config_class_name(): cls for cls in methods.CLASSES}


def from_config(source: dict | str | os.PathLike, **overrides: Any) -> Scheduler:
    """A scheduler from a diffusers scheduler config.

    ``source`` is a config dict, a ``scheduler_config.json`` file, or a model folder holding
    ``scheduler/scheduler_config.json``. Keys are diffusers' own (``num_train_timesteps``,
    ``set_alpha_to_one``, ``skip_prk_steps``, ...), checked as strictly as our keyword
    options (a boolean key takes a JSON boolean, an integer key an integer). ``overrides``
    are our option names and win over the file. Metadata keys (``_class_name``,
    ``_diffusers_version``, ...) are not options; keys the class does not have are reported
    in one warning, unless they hold the value that means "off" (:data:`INERT_VALUES`).
    """
    config = _read(source)
    classes = registry()
    name = config.get("_class_name")
    if not isinstance(name, str) or name not in classes:
        raise ValueError(f"unsupported scheduler class {name!r}; supported: {sorted(classes)}")
    return build(classes[name], config, overrides, strict=True)
