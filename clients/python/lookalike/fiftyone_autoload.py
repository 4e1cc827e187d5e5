"""Loads lookalike's FiftyOne backend as soon as `fiftyone.brain` is imported, so that
`fob.compute_similarity(dataset, backend="lookalike")` needs no model: the server embeds.

Named in FiftyOne's config, `FIFTYONE_MODULE_PATH=lookalike.fiftyone_autoload` or `"module_path":
["lookalike.fiftyone_autoload"]` in ~/.fiftyone/config.json (`lookalike fiftyone-register` writes it).
FiftyOne imports it while `import fiftyone` is still running, before `fiftyone.brain` can be imported;
so this module only waits for `fiftyone.brain`, then imports the backend. Only the standard library here.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

_WATCHED = "fiftyone.brain"
_BACKEND = "lookalike.fiftyone_brain"


class _ThenImportBackend(importlib.abc.Loader):
    """FiftyOne's own loader for `fiftyone.brain`, then the backend's import."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        importlib.import_module(_BACKEND)


class _WatchFiftyOneBrain(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _WATCHED:
            return None
        sys.meta_path.remove(self)  # one import to watch
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenImportBackend(spec.loader)
        return spec


if _WATCHED in sys.modules:
    importlib.import_module(_BACKEND)
elif not any(isinstance(f, _WatchFiftyOneBrain) for f in sys.meta_path):
    sys.meta_path.insert(0, _WatchFiftyOneBrain())
