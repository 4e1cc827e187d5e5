"""How FiftyOne finds the `lookalike` similarity backend: its entries in FiftyOne's config files, and the patch
that lets `fob.compute_similarity(dataset, backend="lookalike")` run with no model (the server embeds).

`register()` and `register_autoload()` edit the config files (`lookalike fiftyone-register` calls them);
`install()` patches this process, and lookalike.fiftyone_brain calls it when imported. Nothing here imports
the backend itself, so the backend can import this module.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import eta.core.utils as etau
from fiftyone.core.config import locate_config

# `fiftyone.brain` is imported inside the functions, never here: with the autoload module in FiftyOne's config,
# importing `fiftyone.brain` imports lookalike.fiftyone_brain, which imports this module, and this module must
# be complete by then (`lookalike fiftyone-register` imports it first).

BACKEND = "lookalike"
# The path users put in their brain config (and FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS): keep it stable.
CONFIG_CLS = "lookalike.fiftyone_brain.LookalikeSimilarityConfig"
AUTOLOAD_MODULE = "lookalike.fiftyone_autoload"


def register(config_path: Path | None = None, *, server: str | None = None, make_default: bool = False) -> Path:
    """Adds the backend to FiftyOne's brain config file, keeping everything else in it; returns its path.

    The file is ``FIFTYONE_BRAIN_CONFIG_PATH`` or ``~/.fiftyone/brain_config.json`` unless given.
    """
    from fiftyone.brain.config import locate_brain_config

    path = Path(config_path) if config_path is not None else Path(locate_brain_config())
    settings = _read_settings(path)
    backends = settings.setdefault("similarity_backends", {})
    if not isinstance(backends, dict):
        raise ValueError(f"{path}: similarity_backends is not a JSON object")
    entry = backends.setdefault(BACKEND, {})
    entry["config_cls"] = CONFIG_CLS
    if server is not None:
        entry["server"] = server
    if make_default:
        settings["default_similarity_backend"] = BACKEND
    _write_settings(path, settings)
    return path


def register_autoload(config_path: Path | None = None) -> Path:
    """Adds the autoload module to FiftyOne's config `module_path`, so that every `import fiftyone` loads
    this backend in time for `compute_similarity` with no model; returns the config file's path.

    The file is ``FIFTYONE_CONFIG_PATH`` or ``~/.fiftyone/config.json`` unless given.
    """
    if importlib.util.find_spec(AUTOLOAD_MODULE) is None:
        raise RuntimeError(f"{AUTOLOAD_MODULE} is not installed; FiftyOne would warn about it at every import")
    path = Path(config_path) if config_path is not None else Path(locate_config())
    settings = _read_settings(path)
    modules = settings.get("module_path") or []
    modules = [modules] if isinstance(modules, str) else list(modules)
    if AUTOLOAD_MODULE not in modules:
        modules.append(AUTOLOAD_MODULE)
    settings["module_path"] = modules
    _write_settings(path, settings)
    return path


def environment(server: str | None = None, make_default: bool = False) -> dict[str, str]:
    """The environment variables that register the backend with no config file: FIFTYONE_MODULE_PATH included,
    without which FiftyOne loads its default zoo model before the backend is imported (`--print-env`)."""
    env = {
        "FIFTYONE_MODULE_PATH": AUTOLOAD_MODULE,
        "FIFTYONE_BRAIN_SIMILARITY_BACKENDS": f"*,{BACKEND}",
        f"FIFTYONE_BRAIN_SIMILARITY_{BACKEND.upper()}_CONFIG_CLS": CONFIG_CLS,
    }
    if server is not None:
        env[f"FIFTYONE_BRAIN_SIMILARITY_{BACKEND.upper()}_SERVER"] = server
    if make_default:
        env["FIFTYONE_BRAIN_DEFAULT_SIMILARITY_BACKEND"] = BACKEND
    return env


def model_fiftyone_chose() -> str | None:
    """FiftyOne's default model, when the `fob.compute_similarity` call running now was given no model, no
    embeddings and no embeddings field, so that FiftyOne loaded that model itself; else None.

    That happens when the backend was registered without the autoload module: FiftyOne picks and loads its
    default model before it imports any backend, so the patch in `install()` comes too late for that call.
    The user's arguments are read from the public function's frame (FiftyOne has replaced `model` below it).
    """
    import fiftyone.brain as fb
    import fiftyone.brain.similarity as fbs

    code = getattr(fb.compute_similarity, "__code__", None)
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    if frame is None:
        return None  # called some other way: nothing to tell
    given = frame.f_locals
    if _fiftyone_picks_default_model(
        given.get("samples"), given.get("patches_field") or given.get("roi_field"), given.get("embeddings"),
        given.get("model"), (given.get("kwargs") or {}).get("embeddings_field"),
    ):
        return getattr(fbs, "_DEFAULT_MODEL", "FiftyOne's default model")
    return None


def _fiftyone_picks_default_model(samples: Any, patches_field: str | None, embeddings: Any, model: Any,
                                  embeddings_field: str | None) -> bool:
    """Whether fiftyone-brain's `compute_similarity` loads its default model for these arguments: no model and no
    embeddings, or only the name of an embeddings field that does not exist yet (which it would fill)."""
    if model is not None:
        return False
    field = embeddings_field or (embeddings if etau.is_str(embeddings) else None)
    if field is None:
        return embeddings is None
    if embeddings is not None and not etau.is_str(embeddings):
        return False  # embeddings=False (or an array) with embeddings_field: nothing to compute
    import fiftyone.brain.internal.core.utils as fbu

    return not fbu.parse_data_field(samples, field, patches_field=patches_field, data_type="embeddings")[1]


def chosen_model_message(model: str) -> str:
    return (
        f"compute_similarity(backend={BACKEND!r}) got no model, so FiftyOne loaded its default model {model!r} "
        f"before it imported the {BACKEND} backend (registered by environment variables or the brain config "
        f"alone); nothing was stored, as {model!r}'s vectors are not the server's. To let the server embed, set "
        f"FIFTYONE_MODULE_PATH={AUTOLOAD_MODULE} (or run `lookalike fiftyone-register --autoload`, or import "
        f"lookalike.fiftyone_brain first); in this process the backend is loaded now, so calling again embeds on "
        f"the server. To embed on the client with {model!r} instead, pass model={model!r}."
    )


def install(config_cls: type) -> None:
    """Lets `fob.compute_similarity(..., backend="lookalike")` run without a model, and registers the backend
    in this process's brain config if its files did not (idempotent). `config_cls`: the backend's config class,
    LookalikeSimilarityConfig, passed in so that this module need not import the backend."""
    import fiftyone.brain as fb
    import fiftyone.brain.similarity as fbs

    if not getattr(fbs.compute_similarity, "_lookalike", False):
        fbs.compute_similarity = _server_side_compute_similarity(fbs.compute_similarity, config_cls)
    backends = fb.brain_config.similarity_backends
    if BACKEND not in backends:
        backends[BACKEND] = {"config_cls": CONFIG_CLS}


def _read_settings(path: Path) -> dict[str, Any]:
    text = path.read_text() if path.exists() else ""
    try:
        settings = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or remove it, then register again") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path} is not a FiftyOne config file (expected a JSON object of settings)")
    return settings


def _write_settings(path: Path, settings: dict[str, Any]) -> None:
    """Replaces the file atomically, keeping its permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        json.dump(settings, f, indent=4)
        f.write("\n")
    os.chmod(f.name, path.stat().st_mode & 0o777 if path.exists() else 0o644)
    os.replace(f.name, path)


def _is_lookalike_backend(backend: Any, config_cls: Any, ours: type) -> bool:
    """Whether `compute_similarity(backend=..., config_cls=...)` resolves to this backend (config class `ours`)."""
    import fiftyone.brain as fb

    if backend is None:
        backend = fb.brain_config.default_similarity_backend
    cls = backend if inspect.isclass(backend) else config_cls
    if cls is None:
        cls = fb.brain_config.similarity_backends.get(backend, {}).get("config_cls")
    if etau.is_str(cls):
        try:
            cls = etau.get_class(cls)
        except (ImportError, AttributeError, ValueError):
            return False
    return inspect.isclass(cls) and issubclass(cls, ours)


def _server_side_compute_similarity(compute_similarity, ours: type):
    """Wraps fiftyone-brain's `compute_similarity`: with no model and no embeddings (or only the name of an
    embeddings field still to fill), the server embeds."""

    @functools.wraps(compute_similarity)
    def wrapper(samples, patches_field, roi_field, embeddings, brain_key, model, model_kwargs, force_square,
                alpha, batch_size, num_workers, skip_failures, progress, backend, **kwargs):
        field = kwargs.get("embeddings_field") or (embeddings if etau.is_str(embeddings) else None)
        server_embeds = _is_lookalike_backend(backend, kwargs.get("config_cls"), ours) and (
            _fiftyone_picks_default_model(samples, patches_field or roi_field, embeddings, model, field)
        )
        if not server_embeds:
            return compute_similarity(
                samples, patches_field, roi_field, embeddings, brain_key, model, model_kwargs, force_square,
                alpha, batch_size, num_workers, skip_failures, progress, backend, **kwargs,
            )
        if roi_field is not None:
            raise ValueError("roi_field needs a model on the client: pass model=... (the server embeds whole images "
                             "or patches_field objects)")
        # `embeddings=False` registers an empty index without FiftyOne's default model; then the server embeds
        # (and writes the embeddings field, if one was named).
        if field is not None:
            kwargs["embeddings_field"] = field
        results = compute_similarity(
            samples, patches_field, roi_field, False, brain_key, None, model_kwargs, force_square, alpha,
            batch_size, num_workers, skip_failures, progress, backend, **kwargs,
        )
        results.add_samples(
            samples, patches_field=patches_field, force_square=force_square, alpha=alpha,
            skip_failures=skip_failures, progress=progress,
        )
        return results

    wrapper._lookalike = True
    return wrapper
