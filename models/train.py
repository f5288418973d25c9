"""Train the shipped marks-task models: Poly-NL classifier and its baseline twin.

    python -m polynl_models.train --out models/checkpoints

Both networks get the same seed, the same data stream and the same schedule. Every epoch
draws fresh training images (seed TRAIN_SEED_BASE + epoch); the held-out split is
``data.held_out_split()`` (seed data.HELD_OUT_SEED), which no training epoch uses.
Determinism: fixed seeds, a fixed thread count and ``torch.use_deterministic_algorithms``.
"""

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from polynl_deploy.io import atomic_path, sha256_of, write_bytes_atomic
from polynl_models import data
from polynl_models.registry import MARKS_METADATA, build_model, get_spec, parameter_count

POLYNL_NAME = "polynl-marks-small"
BASELINE_NAME = "marks-small-baseline"
TRAIN_SEED_BASE = 1000
"""Epoch e trains on ``make_marks_dataset(images_per_epoch, TRAIN_SEED_BASE + e)``."""


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 16
    images_per_epoch: int = 8192
    batch_size: int = 64
    learning_rate: float = 5e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.2
    held_out_size: int = 2000
    threads: int = 2


def train_one(name: str, config: TrainConfig, marks: data.MarksConfig) -> tuple[nn.Module, float]:
    """Train zoo model ``name`` (AdamW, one-cycle schedule); returns the model in eval mode and seconds taken."""
    torch.manual_seed(config.seed)
    model = build_model(name)
    steps_per_epoch = config.images_per_epoch // config.batch_size
    optimizer = torch.optim.AdamW(model.parameters(), config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate,
                                                   total_steps=config.epochs * steps_per_epoch,
                                                   pct_start=config.warmup_fraction)
    shuffle = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    for epoch in range(config.epochs):
        images, labels = data.make_marks_dataset(config.images_per_epoch, TRAIN_SEED_BASE + epoch, marks)
        order = torch.randperm(config.images_per_epoch, generator=shuffle)
        model.train()
        total_loss = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
        print(f"{name} epoch {epoch + 1}/{config.epochs} loss {total_loss / steps_per_epoch:.4f}", flush=True)
    return model.eval(), time.perf_counter() - start


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of correctly classified images (model in its current mode)."""
    correct = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def save_checkpoint(model: nn.Module, path: Path) -> str:
    """Write the state dict (contiguous copies) as safetensors, atomically; returns its sha256."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return sha256_of(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polynl_models.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the .safetensors files and the JSON")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads, help="torch CPU threads (fixed for determinism)")
    args = parser.parse_args(argv)
    config = TrainConfig(seed=args.seed, epochs=args.epochs, threads=args.threads)
    marks = data.MarksConfig()

    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    held_out_images, held_out_labels = data.held_out_split(config.held_out_size, marks)
    args.out.mkdir(parents=True, exist_ok=True)

    results = {}
    for name in (POLYNL_NAME, BASELINE_NAME):
        model, seconds = train_one(name, config, marks)
        held_out = accuracy(model, held_out_images, held_out_labels)
        checkpoint = get_spec(name).checkpoint
        sha256 = save_checkpoint(model, args.out / checkpoint)
        results[name] = {"held_out_accuracy": held_out, "training_seconds": round(seconds, 1),
                         "parameters": parameter_count(model), "checkpoint": checkpoint, "sha256": sha256}
        print(f"{name}: held-out accuracy {held_out:.4f} ({held_out_images.shape[0]} images), "
              f"trained in {seconds:.1f} s", flush=True)

    record = {
        "task": "marks: 1x32x32 noise images with a mark near each side; label 1 = same shape",
        "models": results,
        "held_out": {"function": "polynl_models.data.held_out_split", "size": config.held_out_size,
                     "seed": data.HELD_OUT_SEED},
        "training_data": {"function": "polynl_models.data.make_marks_dataset",
                          "seeds": f"{TRAIN_SEED_BASE} + epoch", "images_per_epoch": config.images_per_epoch},
        "dataset_parameters": marks.as_dict(),
        "train_config": asdict(config),
        "command": shlex.join(["python", "-m", "polynl_models.train", *(sys.argv[1:] if argv is None else argv)]),
        "seed": config.seed,
        "total_training_seconds": round(sum(r["training_seconds"] for r in results.values()), 1),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
    }
    write_bytes_atomic(args.out / MARKS_METADATA, (json.dumps(record, indent=2) + "\n").encode())
    print(f"wrote {args.out / MARKS_METADATA}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
