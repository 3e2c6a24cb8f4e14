"""The command line and YAML files: ``--preset`` < ``--config`` YAML < ``--section.field value`` flags.

Any field can be set as ``--section.field value`` (or ``--section.field=value``); the common ones have short
flags (``--model``, ``--data``, ``--output-dir``, ``--max-steps``, ...). ``python -m lead_fast.train --help``
lists every field with its docstring and choices. Besides the config's own checks, this is where the
machine is asked: a tracker or vLLM that is not installed, a pretrained name lead_fast does not build.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import inspect
import os
import textwrap
import types
import typing

from lead_fast.config import SECTIONS, TrainConfig, choices_of, suggest, validate
from lead_fast.errors import ConfigError
from lead_fast.presets import PRESETS, preset_changes
from lead_fast.pretrained import MODELS, PREFIX
from lead_fast.rollout.vllm_check import vllm_import_problem

# Short flags for the common fields.
SHORT_FLAGS = {
    "--model": "model.path",
    "--data": "data.path",
    "--output-dir": "run.output_dir",
    "--max-steps": "run.max_steps",
    "--save-every": "run.save_every",
    "--eval-every": "run.eval_every",
    "--seed": "run.seed",
}


# --------------------------------------------------------------------------------------------------
# Field docs, value parsing, overrides.


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = str(b.value.value)
    return docs


def all_keys(cfg: TrainConfig | None = None) -> list[str]:
    cfg = cfg or TrainConfig()
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(cfg, s))]


def _convert(key: str, raw, typ):
    """Turn a string (from the command line) or a YAML value into the field's type."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        typ = next(a for a in args if a is not type(None))
        origin = typing.get_origin(typ)
        args = typing.get_args(typ)
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if origin is typing.Literal:      # the value's membership is the config's check (with suggestions)
            return str(raw)
        if origin is list:
            if isinstance(raw, str):
                import yaml

                raw = yaml.safe_load(raw) if raw.strip().startswith("[") else ([raw] if raw else [])
            if not isinstance(raw, (list, tuple)):
                raise ValueError
            item = str if typing.get_origin(args[0]) is typing.Literal else args[0]
            return [item(x) for x in raw]
        if origin is tuple:
            items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
            if len(items) != len(args):
                raise ValueError
            return tuple(a(x) for a, x in zip(args, items))
        if typ is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is str:
            return str(raw)
    except (TypeError, ValueError):
        pass
    else:
        return raw
    raise ConfigError(f"{key}: cannot read {raw!r} as {getattr(typ, '__name__', typ)}")


def _types(section_obj) -> dict:
    return typing.get_type_hints(type(section_obj))


def set_value(cfg: TrainConfig, key: str, raw) -> None:
    """Set ``section.field`` from a string or YAML value, with a clear error for unknown keys."""
    if "." not in key:
        raise ConfigError(f"unknown config key {key!r}: keys look like section.field{suggest(key, all_keys(cfg))}")
    section, name = key.split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r} in {key!r}{suggest(key, all_keys(cfg))}")
    obj = getattr(cfg, section)
    types = _types(obj)
    if name not in types:
        raise ConfigError(f"unknown config key {key!r}{suggest(key, all_keys(cfg))}")
    setattr(obj, name, _convert(key, raw, types[name]))


def load_yaml(cfg: TrainConfig, path: str) -> set[str]:
    """Apply a YAML file of sections; returns the keys it set."""
    import yaml

    keys: set[str] = set()

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text (UTF-8) file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        if section == "preset":
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping{suggest(str(section), SECTIONS)}")
        for name, v in values.items():
            try:
                set_value(cfg, f"{section}.{name}", v)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
            keys.add(f"{section}.{name}")
    return keys


def _syntax_example(key: str, typ) -> str:
    """How to write a list or a pair on the command line (other values are written as they read)."""
    origin = typing.get_origin(typ)
    if origin is list:
        return f"; a list: --{key} '[a, b]', or one item alone"
    if origin is tuple:
        return f"; a pair: --{key} x,y"
    return ""


def invoked_as() -> str:
    """The command line that started this process, as --help's usage line shows it."""
    if os.environ.get("LEAD_FAST_LAUNCHER"):            # set by lead_fast.launch for the ranks it starts
        return "lead-fast"
    if os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("LOCAL_RANK"):
        return "torchrun --nproc_per_node=N -m lead_fast.train"
    return "python -m lead_fast.train"


def help_text() -> str:
    lines = ["Config fields (set with --section.field VALUE; defaults shown are the dataclass defaults):"]
    for s in SECTIONS:
        cls = type(getattr(TrainConfig(), s))
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        lines.append(f"\n  [{s}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            allowed = choices_of(cls, f.name)
            one_of = f"; one of {', '.join(allowed)}" if allowed else ""
            syntax = _syntax_example(f"{s}.{f.name}", hints[f.name])
            lines.append(f"    --{s}.{f.name} (default {default!r}{one_of}{syntax})")
            doc = " ".join(docs.get(f.name, "").split())    # one paragraph, however the docstring was wrapped
            lines.extend(textwrap.wrap(doc, 110, initial_indent=" " * 8, subsequent_indent=" " * 8))
    short = ", ".join(f"{k} = --{v}" for k, v in SHORT_FLAGS.items())
    lines.append("")
    lines.extend(textwrap.wrap(f"Short flags: {short}", 110, initial_indent="  ", subsequent_indent=" " * 8))
    lines.append("\n  Presets (--preset NAME; without it: tiny, or defaults when a model is given):")
    for name, make in PRESETS.items():
        changed = ", ".join(f"{k}={v}" for k, v in preset_changes(name).items()) or "nothing"
        lines.extend(textwrap.wrap(f"{name}: {' '.join(make.__doc__.split())}", 110, initial_indent="    ",
                                   subsequent_indent=" " * 8))
        lines.extend(textwrap.wrap(f"sets: {changed}", 110, initial_indent=" " * 8, subsequent_indent=" " * 8))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> TrainConfig:
    """Build the config from ``--preset``, ``--config`` and overrides. Raises ConfigError on bad input.
    ``prog``: the command --help's usage line names (default: how this process was started)."""
    ap = argparse.ArgumentParser(
        prog=prog or invoked_as(), description="GRPO-LEAD training with lead_fast.",
        epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--preset", help=f"named preset: {', '.join(PRESETS)} (default: tiny, or defaults when a model "
                                     "is given with --model, --model.path or the config file)")
    ap.add_argument("--config", help="YAML file of sections (model:, data:, ...) applied over the preset")
    ap.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    for flag, key in SHORT_FLAGS.items():
        ap.add_argument(flag, dest=key, default=None, help=f"same as --{key}")
    args, rest = ap.parse_known_args(argv)
    if args.preset is None:     # the demo's settings only for the demo's model; a user's model gets the defaults
        args.preset = "defaults" if _names_a_model(args, rest) else "tiny"
    if args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}{suggest(args.preset, PRESETS)}; choose one of "
                          f"{', '.join(PRESETS)}")
    cfg = PRESETS[args.preset]()
    explicit = load_yaml(cfg, args.config) if args.config else set()
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}: overrides look like --section.field VALUE")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        elif (i + 1 >= len(rest) or rest[i + 1].startswith("--")) and _is_bool(cfg, key):
            val, i = "true", i + 1      # a switch written alone, as README writes it: --run.overwrite
        else:
            if i + 1 >= len(rest):
                raise ConfigError(f"--{key} needs a value")
            val = rest[i + 1]
            i += 2
        overrides.append((key, val))
    for key, val in overrides:
        if "." not in key:
            flags = list(SHORT_FLAGS) + ["--preset", "--config", "--resume"] + [f"--{k}" for k in all_keys(cfg)]
            raise ConfigError(f"unknown option --{key}{suggest('--' + key, flags)}")
        set_value(cfg, key, val)
        explicit.add(key)
    for key in SHORT_FLAGS.values():
        val = getattr(args, key)
        if val is not None:
            set_value(cfg, key, val)
            explicit.add(key)
    if args.resume:
        cfg.run.resume = True
    _settle_preset_values(cfg, explicit)
    return check_environment(validate(cfg))


def _names_a_model(args, rest: list[str]) -> bool:
    """Whether the command line or the config file gives a model (before any preset is applied)."""
    if getattr(args, "model.path") is not None or any(t == "--model.path" or t.startswith("--model.path=") for t in rest):
        return True
    if args.config:
        import yaml

        try:
            with open(args.config, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return False        # load_yaml reports it, with the reason
        return isinstance(data, dict) and isinstance(data.get("model"), dict) and data["model"].get("path") is not None
    return False


def _is_bool(cfg: TrainConfig, key: str) -> bool:
    section, _, name = key.partition(".")
    return isinstance(getattr(getattr(cfg, section, None), name, None), bool)


def _settle_preset_values(cfg: TrainConfig, explicit: set[str]) -> None:
    """A value the user gave wins over what the preset derived from another field, and the two are never
    silently at odds: ``--max-steps`` replaces the preset's ``run.epochs``; ``--data`` replaces the preset's
    eval file (the eval problems are then held out from the user's data); both given is a config error;
    ``--model`` drops the preset's warm start (``--run.warm_start_steps N`` asks for one on that model)."""
    if "run.max_steps" in explicit and cfg.run.epochs > 0:
        if "run.epochs" in explicit:
            raise ConfigError(f"--max-steps {cfg.run.max_steps} and run.epochs {cfg.run.epochs} both set the length "
                              "of training; give one (run.epochs 0 turns epochs off)")
        cfg.run.epochs = 0          # the preset's epochs give way to the explicit step count
    if "data.path" in explicit and "data.eval_path" not in explicit and cfg.data.eval_path is not None:
        cfg.data.eval_path = None   # the preset's eval file belongs to the preset's data
    if "model.path" in explicit and "run.warm_start_steps" not in explicit:
        cfg.run.warm_start_steps = 0   # the preset's warm start belongs to the preset's model


def check_environment(cfg: TrainConfig) -> TrainConfig:
    """The checks that ask the machine: a pretrained name lead_fast builds, trackers and vLLM installed."""
    if cfg.model.path is not None and cfg.model.path.startswith(PREFIX) and cfg.model.path[len(PREFIX):] not in MODELS:
        raise ConfigError(f"model.path {cfg.model.path!r}: lead_fast builds {', '.join(PREFIX + m for m in MODELS)}; "
                          "anything else must be a local model directory")
    for name in cfg.run.report_to:
        if importlib.util.find_spec(name) is None:   # each tracker's package has its name
            raise ConfigError(f"run.report_to includes {name}, but the {name} package is not installed: "
                              "pip install 'lead_fast[tracking]'")
    if cfg.rollout.engine == "vllm":
        problem = vllm_import_problem()
        if problem:
            raise ConfigError(problem)
    return cfg
