"""Model SOURCEs: ``package.module:factory`` or a zoo name, plus an optional checkpoint."""

import importlib
import inspect
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from polynl_deploy import defaults
from polynl_deploy.errors import SourceError
from polynl_deploy.io import apply_state_dict, load_state_dict

Shape = tuple[int, ...]
log = logging.getLogger(__name__)


@dataclass
class LoadedSource:
    model: torch.nn.Module
    name: str
    input_shapes: list[Shape] | None  # with batch; None when the source does not say
    files: tuple[Path, ...] = ()
    """The files the model was read from (its module, its checkpoint): never an output."""

    def example_inputs(self, input_shapes: list[Shape] | None = None,
                       seed: int = defaults.SEED) -> tuple[torch.Tensor, ...]:
        shapes = input_shapes or self.input_shapes
        if not shapes:
            raise SourceError(f"{self.name}: no default input shape known; give --input-shape (e.g. 1x3x224x224)")
        for shape in shapes:
            if math.prod(shape) > defaults.EXAMPLE_MAX_ELEMENTS:
                raise SourceError(f"input shape {_text(shape)} has {math.prod(shape):,} elements, more than the "
                                  f"{defaults.EXAMPLE_MAX_ELEMENTS:,} an example input may have; dynamic axes "
                                  "make a small example shape enough")
        generator = torch.Generator().manual_seed(seed)
        try:
            return tuple(torch.randn(*s, generator=generator) for s in shapes)
        except (RuntimeError, MemoryError) as exc:
            raise SourceError(f"cannot allocate example inputs of shape(s) {', '.join(map(_text, shapes))}: "
                              f"{(str(exc).splitlines() or [''])[0]}") from None

    def check_call(self, inputs: tuple[torch.Tensor, ...], given: bool) -> None:
        """Call the model on ``inputs``; a SourceError names the input count or shapes it does not take."""
        what = "input shape(s) " + ", ".join(_text(t.shape) for t in inputs) + (" (--input-shape)" if given else "")
        params = inspect.signature(self.model.forward).parameters.values()
        if not any(p.kind == p.VAR_POSITIONAL for p in params):
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            required = sum(p.default is p.empty for p in positional)
            if not required <= len(inputs) <= len(positional):
                count = str(required) if required == len(positional) else f"{required} to {len(positional)}"
                raise SourceError(f"{self.name} takes {count} input(s), but {len(inputs)} {what} were given")
        try:
            with torch.inference_mode():
                self.model(*inputs)
        except Exception as exc:  # whatever the model raises for inputs it cannot take
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SourceError(f"{self.name} cannot run on {what}: {reason}") from None


def _text(shape) -> str:
    return "x".join(map(str, shape))


def parse_shape(text: str) -> Shape:
    """'1x3x224x224' or '1,3,224,224' -> (1, 3, 224, 224)."""
    parts = re.split(r"[x,]", text.strip().lower())
    if not parts or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise SourceError(f"bad input shape {text!r}: expected positive integers like 1x3x224x224")
    return tuple(int(p) for p in parts)


def _from_factory(source: str) -> tuple[torch.nn.Module, list[Shape] | None, tuple[Path, ...]]:
    module_name, _, attr = source.partition(":")
    if not module_name.strip(".") or not attr:
        raise SourceError(f"source {source!r}: expected package.module:factory, or a zoo name (see `polynl models`)")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError, TypeError) as exc:  # relative names ('.x') raise TypeError
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0]:
            hint = "; modules are imported from sys.path: for one in the current directory, set PYTHONPATH=."
        raise SourceError(f"source {source!r}: cannot import module {module_name!r} ({exc}){hint}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise SourceError(f"source {source!r}: module {module_name!r} has no callable {attr!r}")
    try:
        model = _seeded(factory)
    except Exception as exc:  # the user's factory: any failure is a bad source
        raise SourceError(f"source {source!r}: {attr}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"source {source!r}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    shape = getattr(model, "default_input_shape", None) or getattr(factory, "default_input_shape", None)
    if shape and not (isinstance(shape, (tuple, list)) and all(isinstance(d, int) and d > 0 for d in shape)):
        raise SourceError(f"source {source!r}: default_input_shape {shape!r} is not a tuple of positive integers")
    module_file = getattr(module, "__file__", None)
    return model, ([tuple(shape)] if shape else None), (Path(module_file),) if module_file else ()


def _from_zoo(name: str, with_pretrained: bool) -> tuple[torch.nn.Module, list[Shape] | None, tuple[Path, ...]]:
    try:
        from polynl_models import registry
    except ImportError as exc:
        raise SourceError(f"source {name!r}: not module:factory, and the model zoo is not installed") from exc
    spec = registry.get_spec(name)  # raises SourceError with close matches
    if with_pretrained and spec.checkpoint:
        return registry.load_pretrained(name), [(1, *spec.input_shape)], (registry.CHECKPOINT_DIR / spec.checkpoint,)
    if with_pretrained:
        log.warning("%s has no shipped checkpoint: its weights are its initialization seeded with %d, the same "
                    "in every run (give --checkpoint for trained weights)", name, defaults.SEED)
    return _seeded(lambda: registry.build_model(name)), [(1, *spec.input_shape)], ()


def _seeded(build):
    """``build()`` with torch's RNG seeded (``defaults.SEED``) and restored afterwards: a model without a
    checkpoint gets the same initial weights in every process, so export, validate and serve agree."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(defaults.SEED)
        return build()


def load_source(source: str, checkpoint=None) -> LoadedSource:
    """Build the model named by ``source`` in eval mode; load ``checkpoint`` strictly if given."""
    if ":" in source:
        model, shapes, files = _from_factory(source)
    else:
        model, shapes, files = _from_zoo(source, with_pretrained=checkpoint is None)
    if checkpoint is not None:
        apply_state_dict(model, load_state_dict(checkpoint), str(checkpoint))
        files = (*files, Path(checkpoint))
    return LoadedSource(model.eval(), source, shapes, files)
