"""The shipped marks-task checkpoints: they load safely and reach their recorded held-out accuracy.

Tolerance: the held-out images are regenerated bit-for-bit from their seed and the weights
are fixed, so the only variation left is floating-point summation order (BLAS kernels, thread
count, SIMD width, the folded vs naive Poly-NL form). That can flip only predictions whose
logit margin is near round-off; 0.5 percentage points is 10 of the 2000 held-out images,
far more than such ties, and far less than any real regression (wrong weights or data).
"""


import pytest
import torch

from polynl_deploy.io import sha256_of
from polynl_models import data, registry
from polynl_models.train import BASELINE_NAME, POLYNL_NAME, accuracy

ACCURACY_TOLERANCE = 0.005
MAX_CHECKPOINT_BYTES = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def record() -> dict:
    return registry.checkpoint_metadata(POLYNL_NAME)


@pytest.fixture(scope="module")
def held_out(record):
    return data.held_out_split(record["held_out"]["size"])


@pytest.mark.parametrize("name", [POLYNL_NAME, BASELINE_NAME])
def test_checkpoint_file_is_small_and_matches_its_record(name, record):
    path = registry.CHECKPOINT_DIR / registry.get_spec(name).checkpoint
    assert path.stat().st_size <= MAX_CHECKPOINT_BYTES
    assert sha256_of(path) == record["models"][name]["sha256"]


@pytest.mark.parametrize("name", [POLYNL_NAME, BASELINE_NAME])
def test_shipped_model_reaches_its_recorded_held_out_accuracy(name, record, held_out):
    model = registry.load_pretrained(name)
    assert not any(module.training for module in model.modules())
    measured = accuracy(model, *held_out)
    assert measured == pytest.approx(record["models"][name]["held_out_accuracy"], abs=ACCURACY_TOLERANCE)


def test_polynl_clearly_beats_the_baseline(record):
    polynl = record["models"][POLYNL_NAME]["held_out_accuracy"]
    baseline = record["models"][BASELINE_NAME]["held_out_accuracy"]
    assert polynl >= 0.95
    assert polynl - baseline >= 0.25


def test_record_describes_how_to_reproduce(record):
    assert record["command"].startswith("python -m polynl_models.train")
    assert record["dataset_parameters"] == data.MarksConfig().as_dict()
    assert record["held_out"]["seed"] == data.HELD_OUT_SEED
    for key in ("seed", "train_config", "total_training_seconds", "torch_version"):
        assert key in record


def test_held_out_split_is_deterministic_and_distinct_from_training_data(held_out):
    images, labels = data.held_out_split(len(held_out[1]))
    assert torch.equal(images, held_out[0]) and torch.equal(labels, held_out[1])
    training_images, _ = data.make_marks_dataset(8, 1000)
    assert not torch.equal(training_images, images[:8])
    assert 0.4 < labels.float().mean().item() < 0.6


def test_marks_are_placed_in_opposite_bands():
    config = data.MarksConfig(noise_std=0.0)
    images, _ = data.make_marks_dataset(64, seed=5, config=config)
    columns_with_ink = images[:, 0].abs().sum(dim=1) > 0  # (n, width)
    middle = slice(config.band, config.image_size - config.band)
    assert not columns_with_ink[:, middle].any()
    assert columns_with_ink[:, :config.band].any(dim=1).all()
    assert columns_with_ink[:, -config.band:].any(dim=1).all()
