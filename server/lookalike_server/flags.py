"""The serve command line, generated from ServerConfig's fields: one flag per field, named after it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from .config import ENV_PREFIX, ServerConfig

# A field's annotation (a string under `from __future__ import annotations`) -> the flag's type.
_TYPES: dict[str, type] = {"str": str, "Path": str, "int": int, "float": float}


def flag_name(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerConfig field; every default is None, so that unless a flag is given the
    LOOKALIKE_* variable, the config file or the field's default applies (ServerConfig.load)."""
    for field in dataclasses.fields(ServerConfig):
        kind = field.type if isinstance(field.type, str) else field.type.__name__
        help_text = field.metadata.get("help", "")
        if not help_text:
            raise TypeError(f"ServerConfig.{field.name} has no help: give it with config.setting(...)")
        options: dict[str, Any] = {
            "dest": field.name,
            "default": None,
            "help": f"{help_text} [{ENV_PREFIX}{field.name.upper()}]".replace("%", "%%"),
        }
        if kind == "bool":
            options["action"] = argparse.BooleanOptionalAction
        elif kind in _TYPES:
            options["type"] = _TYPES[kind]
            if field.metadata.get("choices"):
                options["choices"] = field.metadata["choices"]
        else:
            raise TypeError(f"ServerConfig.{field.name}: no flag for a field of type {kind}")
        parser.add_argument(flag_name(field), **options)


def build_parser(prog: str = "lookalike-server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the lookalike gRPC server. Each setting is a flag, a LOOKALIKE_* variable (in brackets) "
                    "or a key of the --config file, in that order of precedence.",
    )
    parser.add_argument("--config", type=Path, help="TOML file with settings (flags and LOOKALIKE_* variables win) "
                                                    f"[{ENV_PREFIX}CONFIG]")
    add_config_flags(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The settings the parsed flags, the environment and the config file make together."""
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerConfig)}
    return ServerConfig.load(flags, config_file=args.config)
