"""The methods: one module per paper or family, each holding only its math.

A method class is declared once, in its module: a public subclass of
:class:`~diffsched.core.scheduler.BaseScheduler` defined in a module of this package is
registered by being there. Everything that lists classes derives from :data:`CLASSES`: the
top-level names of ``diffsched``, ``diffsched.SCHEDULERS`` (diffusers' class name -> ours),
the command line's names (each class's ``CLI_NAME``), the docs' pages and nav (grouped by
``FAMILY``), and the generic tests. Modules whose name starts with an underscore, and
``kit`` (the builders), hold shared pieces, not methods.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..core.families import FAMILIES
from ..core.scheduler import BaseScheduler


def _discover() -> tuple[type[BaseScheduler], ...]:
    """Every method class of this package, by family (in FAMILIES' order), then by module
    name and order of definition."""
    found: list[tuple[int, str, int, type[BaseScheduler]]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "kit":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for position, obj in enumerate(vars(module).values()):
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseScheduler)
                and obj.__module__ == module.__name__
                and not obj.__name__.startswith("_")
            ):
                if obj.FAMILY not in FAMILIES:
                    raise TypeError(
                        f"{obj.__name__}.FAMILY must be one of {FAMILIES}, got {obj.FAMILY!r}"
                    )
                found.append((FAMILIES.index(obj.FAMILY), info.name, position, obj))
    return tuple(cls for *_, cls in sorted(found, key=lambda item: item[:3]))


CLASSES = _discover()
"""Every method class (the one registry)."""
ALL = tuple(cls for cls in CLASSES if cls.DIFFUSERS_CLASS is not None)
"""The classes that have a diffusers class (``DIFFUSERS_CLASS``)."""
OURS_ONLY = tuple(cls for cls in CLASSES if cls.DIFFUSERS_CLASS is None)
"""The classes diffusers does not have (their config's ``_class_name`` is our class name)."""
CLI_NAMES = {cls.CLI_NAME: cls for cls in CLASSES if cls.CLI_NAME is not None}
"""The command line's scheduler names (``CLI_NAME``) -> class."""


def _check_unique() -> None:
    for attribute in ("__name__", "CLI_NAME", "DIFFUSERS_CLASS"):
        seen: dict = {}
        for cls in CLASSES:
            value = getattr(cls, attribute)
            if value is not None and seen.setdefault(value, cls) is not cls:
                raise TypeError(
                    f"two method classes share {attribute} {value!r}: "
                    f"{seen[value].__module__}.{seen[value].__name__} and "
                    f"{cls.__module__}.{cls.__name__}"
                )


_check_unique()
globals().update({cls.__name__: cls for cls in CLASSES})
__all__ = ["ALL", "CLASSES", "CLI_NAMES", "OURS_ONLY", *(cls.__name__ for cls in CLASSES)]
