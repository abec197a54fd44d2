"""One typed config system for every script.

A script describes its settings as dataclasses whose fields are made with
`opt(default, help)`. `parse_args` then resolves them in this order:

    dataclass defaults  <  --config=file.toml (repeatable)  <  --key=value

All keys live in one flat namespace (`--n_layer=4 --learning_rate=1e-3`), so a
TOML preset is a flat table of the same keys. Values are coerced by the field's
type, so `--dropout=0`, `--compile=false` and `--learning_rate=3e-4` all work,
and anything unknown or malformed stops the script with one clear line.
"""

import dataclasses
import difflib
import sys
import tomllib
import types
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A bad key or value; scripts turn it into a one-line error and exit."""


def opt(default, help):
    """A dataclass field with a one-line description for --help."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _fields(classes):
    fields = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            fields[f.name] = (cls, f, hints[f.name])
    return fields


def _unknown_key(key, known, where):
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else " (see --help for the list of keys)"
    return ConfigError(f"unknown key '{key}'{where}{hint}")


def coerce(key, value, type_):
    """Convert `value` (a command-line string, or a TOML value) to the field's type."""
    optional = typing.get_origin(type_) in (typing.Union, types.UnionType) and type(None) in typing.get_args(type_)
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        type_ = next(t for t in typing.get_args(type_) if t is not type(None))
    bad = ConfigError(f"bad value {value!r} for '{key}': expected {getattr(type_, '__name__', type_)}")
    if type_ is bool:
        if isinstance(value, bool):
            return value
        words = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
        if isinstance(value, str) and value.lower() in words:
            return words[value.lower()]
        raise bad
    if type_ is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:
            number = float(value) if isinstance(value, str) and any(c in value for c in ".eE") else int(value)
        except (TypeError, ValueError):
            raise bad from None
        if isinstance(number, float) and not number.is_integer():
            raise bad
        return int(number)
    if type_ is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if type_ is str:
        if isinstance(value, (dict, list)):
            raise bad
        return str(value)
    raise ConfigError(f"'{key}' has a type the config system does not handle: {type_}")


def _split_argv(argv, known_keys):
    """Turn ['--a=1', '--b', '2', '--flag'] into [('a','1'), ('b','2'), ('flag','true')]."""
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument '{arg}': settings are given as --key=value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = body, argv[i + 1]
            i += 2
        else:
            key, value = body, "true"  # a bare --flag means true
            i += 1
        pairs.append((key.replace("-", "_") if key.replace("-", "_") in known_keys else key, value))
    return pairs


def load_toml(path):
    """Read a flat TOML preset; nested tables are not part of the format."""
    path = Path(path)
    if not path.is_file():
        others = [p.name for p in path.parent.glob("*.toml")] if path.parent.is_dir() else []
        close = difflib.get_close_matches(path.name, others, n=1, cutoff=0.5)
        hint = f" (did you mean '{path.parent / close[0]}'?)" if close else ""
        raise ConfigError(f"config file '{path}' not found{hint}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file '{path}' is not valid TOML: {e}") from None


def help_text(classes, prog, description, base=None, ignored=()):
    """--help: each key once (the first class that has it), with its default (`base` wins) and
    description, in aligned columns; the keys in `ignored` are only named at the end."""
    lines = [f"usage: python {prog} [--config=FILE.toml] [--key=value ...]", ""]
    if description:
        lines += [description, ""]
    sections, seen = [], set(ignored)
    for cls in classes:
        rows = []
        for f in dataclasses.fields(cls):
            if f.name in seen:
                continue
            seen.add(f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            default = (base or {}).get(f.name, default)
            if isinstance(default, str) and not default.isprintable():
                default = repr(default)  # a newline or tab shows as \n or \t
            rows.append((f"--{f.name}={default}", f.metadata.get("help", "")))
        sections.append((cls.__name__, rows))
    config_row = ("--config=FILE.toml", "load settings from a flat TOML file (repeatable, later files win)")
    # Columns line up; a key whose default is too long for the column has its description on the next line.
    width = min(34, max(len(key) for _, rows in sections for key, _ in [config_row, *rows]))

    def row(key, text):
        return f"  {key:<{width}}  {text}" if len(key) <= width else f"  {key}\n  {'':<{width}}  {text}"

    lines.append(row(*config_row))
    for name, rows in sections:
        if rows:
            lines += ["", f"{name}:", *(row(key, text) for key, text in rows)]
    if ignored:
        lines += ["", f"Accepted but ignored here (so that training presets load): {', '.join(ignored)}"]
    return "\n".join(lines)


def parse_args(classes, argv=None, prog="", description="", base=None, ignored=()):
    """Resolve the settings of `classes` from defaults, TOML files and `argv`.

    `base`, a dict of key -> value (e.g. a checkpoint's stored config), replaces
    the defaults when given, so that resuming keeps the run's settings and the
    command line still overrides them. Returns one instance per class.
    `ignored` names keys the script accepts but does not use; --help lists them apart.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(help_text(classes, prog, description, base, ignored))
        raise SystemExit(0)
    fields = _fields(classes)
    values = {}
    if base:
        for key, value in base.items():
            if key not in fields:
                raise _unknown_key(key, fields, " in the stored config")
            values[key] = value
    for key, value in _split_argv(argv, fields):
        if key == "config":
            for file_key, file_value in load_toml(value).items():
                if file_key not in fields:
                    raise _unknown_key(file_key, fields, f" in {value}")
                values[file_key] = coerce(file_key, file_value, fields[file_key][2])
        elif key not in fields:
            raise _unknown_key(key, fields, "")
        else:
            values[key] = coerce(key, value, fields[key][2])
    out = []
    for cls in classes:
        kwargs = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
        out.append(cls(**kwargs))
    return out


def to_dict(*configs):
    """The flat, plain-data form of one or more configs (stored in checkpoints)."""
    flat = {}
    for cfg in configs:
        flat.update(dataclasses.asdict(cfg))
    return flat


def pick(cls, flat):
    """Build `cls` from the keys of a flat dict that belong to it."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in flat.items() if k in names})


def format_config(*configs):
    return format_settings(to_dict(*configs))


def format_settings(flat):
    """One `  key = value` line per setting of a flat dict."""
    return "\n".join(f"  {k} = {v!r}" for k, v in flat.items())


def run_main(main_fn, argv=None):
    """Call a script's main, turning config errors into one clean line."""
    try:
        return main_fn(argv)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
