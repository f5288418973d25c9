"""Reference networks with Poly-NL blocks, a model registry, and a shipped trained checkpoint."""

from polynl_models.data import make_marks_dataset
from polynl_models.registry import (ModelSpec, build_model, get_spec, list_models, load_pretrained,
                                    parameter_count)
from polynl_models.resnet import resnet50_nonlocal, resnet50_polynl, polynl_resnet_small, resnet_small_baseline
from polynl_models.tokens import polynl_tokens_small

__all__ = [
    "ModelSpec", "build_model", "get_spec", "list_models", "load_pretrained", "parameter_count",
    "make_marks_dataset", "resnet50_nonlocal", "resnet50_polynl", "polynl_resnet_small",
    "resnet_small_baseline", "polynl_tokens_small",
]
