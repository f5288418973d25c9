"""The model zoo: names -> ModelSpec, building models, and loading shipped checkpoints.

Input shapes exclude the batch dimension. Every zoo model takes images (C, H, W);
the token model turns them into (B, N, C) tokens itself.
"""

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from polynl_deploy.errors import CheckpointError, SourceError
from polynl_deploy.io import apply_state_dict, load_state_dict
from polynl_models import resnet, tokens

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
MARKS_METADATA = "polynl_marks_small.json"


@dataclass(frozen=True)
class ModelSpec:
    """How to build one zoo model and what it expects."""

    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    """Default input shape without the batch dimension: (C, H, W)."""
    description: str
    checkpoint: str | None = None
    """File name in ``polynl_models/checkpoints`` of shipped weights (safetensors), if any."""
    metadata: str | None = None
    """JSON file next to the checkpoint: accuracies, reproducing command, data parameters."""

    def example_input(self, batch: int = 1, seed: int = 0) -> torch.Tensor:
        """A deterministic standard-normal input of the default shape with a batch dimension."""
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, *self.input_shape, generator=gen)


_SPECS = (
    ModelSpec("resnet50-polynl", resnet.resnet50_polynl, (3, 224, 224),
              "ResNet-50 with 5 Poly-NL blocks (2 in res3, 3 in res4, after every other bottleneck)"),
    ModelSpec("resnet50-nonlocal", resnet.resnet50_nonlocal, (3, 224, 224),
              "ResNet-50 with 5 embedded-Gaussian non-local blocks in the same places"),
    ModelSpec("polynl-resnet-small", resnet.polynl_resnet_small, (3, 32, 32),
              "small ResNet (16/32/64 wide) with Poly-NL blocks after stages 1 and 2, 10 classes"),
    ModelSpec("resnet-small-baseline", resnet.resnet_small_baseline, (3, 32, 32),
              "polynl-resnet-small with its Poly-NL blocks replaced by Identity"),
    ModelSpec("polynl-tokens-small", tokens.polynl_tokens_small, (3, 32, 32),
              "patch embedding (4x4) -> 64 tokens -> 4 Poly-NL token blocks with MLPs -> mean pool -> head"),
    ModelSpec("polynl-marks-small", resnet.polynl_marks_small, (1, 32, 32),
              "trained on the marks task (same shape at opposite sides?); Poly-NL after the last stage",
              checkpoint="polynl_marks_small.safetensors", metadata=MARKS_METADATA),
    ModelSpec("marks-small-baseline", resnet.marks_small_baseline, (1, 32, 32),
              "polynl-marks-small without its Poly-NL block, trained the same way (the comparison)",
              checkpoint="marks_small_baseline.safetensors", metadata=MARKS_METADATA),
)
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def list_models() -> list[str]:
    """Names of all zoo models, sorted."""
    return sorted(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; SourceError naming the closest valid names if there is none."""
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known models: {', '.join(list_models())}"
        raise SourceError(f"unknown zoo model {name!r}; {hint}") from None


def build_model(name: str, **overrides: Any) -> nn.Module:
    """A freshly initialised model; ``overrides`` go to its factory (e.g. ``num_classes=10``)."""
    return get_spec(name).factory(**overrides)


def describe_models() -> list[dict]:
    """One row per zoo model: name, parameters, input shape, shipped checkpoint, description."""
    rows = []
    for name in list_models():
        spec = REGISTRY[name]
        rows.append({"name": name, "parameters": parameter_count(spec.factory()), "input_shape": list(spec.input_shape),
                     "checkpoint": spec.checkpoint, "description": spec.description})
    return rows


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def checkpoint_metadata(name: str) -> dict:
    """The JSON record shipped with the checkpoint of ``name``."""
    spec = get_spec(name)
    if spec.metadata is None:
        raise CheckpointError(f"zoo model {name!r} ships no checkpoint")
    path = CHECKPOINT_DIR / spec.metadata
    if not path.is_file():
        raise CheckpointError(f"checkpoint record {path}: no such file (run python -m polynl_models.train)")
    return json.loads(path.read_text())


def load_pretrained(name: str, checkpoint_dir: Path | str | None = None) -> nn.Module:
    """The zoo model ``name`` with its shipped weights, in eval mode.

    Shipped weights are safetensors files: nothing is unpickled.
    """
    spec = get_spec(name)
    if spec.checkpoint is None:
        shipped = [s.name for s in _SPECS if s.checkpoint]
        raise CheckpointError(f"zoo model {name!r} ships no checkpoint; models with one: {', '.join(shipped)}")
    path = Path(checkpoint_dir or CHECKPOINT_DIR) / spec.checkpoint
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file (run python -m polynl_models.train)")
    model = build_model(name)
    apply_state_dict(model, load_state_dict(path), f"checkpoint {path}")
    return model.eval()
