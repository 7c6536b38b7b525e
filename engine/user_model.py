"""A lab's own model: --model FILE.py:FACTORY or --model package.module:FACTORY, with --model_args.

The factory is called as factory(n_channels, **model_args) and returns a torch module that maps
(N, C, T) windows to one logit each, shape (N,); for data of K >= 3 classes it is called as
factory(n_channels, n_classes=K, **model_args) and returns K logits a window, shape (N, K). Its
source file's hash and its arguments enter the base-model key (base_cache) and provenance.json; the
runner checks and syncs the file like the project's code when it lies in the folder the jobs run
from (runner.check). Every problem is a ConfigError in one line. torch is imported only where a
model is built: the runner reads specs without it.
"""
import hashlib
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from engine.fileio import ConfigError


def is_spec(model):
    """Whether a --model value names a factory (the built-in names hold no colon)."""
    return ":" in str(model)


def parts(spec):
    """(file or module, factory name) of a spec."""
    where, _, factory = str(spec).rpartition(":")
    if not where or not factory:
        raise ConfigError(f"--model {spec}: expected FILE.py:FACTORY or package.module:FACTORY")
    return where, factory


def source_file(spec):
    """The path of the spec's source file (ConfigError when there is none)."""
    where, _ = parts(spec)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"--model {spec}: {where}: no such file")
        return path
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # package.module:FACTORY may name a package in the project folder
    try:
        found = importlib.util.find_spec(where)
    except (ImportError, ValueError) as error:
        raise ConfigError(f"--model {spec}: cannot import {where} ({error})") from None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise ConfigError(f"--model {spec}: no module {where}")
    return Path(found.origin)


def source_hash(spec):
    return hashlib.sha256(source_file(spec).read_bytes()).hexdigest()


def model_args(text):
    """--model_args: a JSON object of the factory's keyword arguments ({} when not given)."""
    if text in (None, ""):
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--model_args: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--model_args: expected a JSON object of keyword arguments, got {text}")
    return value


def factory_of(spec):
    """The factory function the spec names, its module imported (ConfigError when it cannot be)."""
    where, name = parts(spec)
    path = source_file(spec)
    try:
        if where.endswith(".py"):
            # A module name of its own per file content, so two files named alike never clash.
            module_spec = importlib.util.spec_from_file_location(f"user_model_{source_hash(spec)[:12]}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as error:  # the lab's code: any error it raises is its file's problem
        raise ConfigError(f"--model {spec}: importing {path} failed: {type(error).__name__}: {error}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"--model {spec}: {path} has no function {name}")
    return factory


def build(spec, args_text, n_channels, n_classes=2):
    """factory(n_channels, **model_args), checked to be a torch module; a recognizer of K >= 3
    classes calls factory(n_channels, n_classes=K, **model_args)."""
    from torch import nn
    classes = {} if n_classes == 2 else {"n_classes": n_classes}
    try:
        model = factory_of(spec)(int(n_channels), **classes, **model_args(args_text))
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(f"--model {spec}: the factory raised {type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def check_output(model, spec, n_channels, window_size, n_classes=2):
    """One forward pass over two zero windows: the model must give one logit per window, shape (N,),
    or K logits for K >= 3 classes, shape (N, K)."""
    import torch
    x = torch.zeros(2, int(n_channels), int(window_size))
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as error:
        raise ConfigError(f"--model {spec}: a forward pass over windows of shape {tuple(x.shape)} failed: "
                          f"{type(error).__name__}: {error}") from None
    wanted = (2,) if n_classes == 2 else (2, n_classes)
    if not torch.is_tensor(out) or tuple(out.shape) != wanted:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        what = ("one logit per window, shape (N,)" if n_classes == 2 else
                f"{n_classes} logits per window (one per class), shape (N, {n_classes})")
        raise ConfigError(f"--model {spec}: the model must return {what}; windows of shape {tuple(x.shape)} "
                          f"gave {shape}" + (" (squeeze a (N, 1) output)" if n_classes == 2 else ""))


def key_values(args):
    """What a user model adds to the base-model key: its source's hash and its arguments (not the
    file's path, which may be written two ways). {} for a built-in model."""
    if not is_spec(args.model):
        return {}
    return {"model_source_sha256": source_hash(args.model), "model_args": model_args(getattr(args, "model_args", None))}


def provenance_of(args):
    """What provenance.json says of a user model: its key values and its source file ({} for a built-in)."""
    values = key_values(args)
    return dict(values, model_source=str(source_file(args.model))) if values else {}
