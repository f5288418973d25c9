"""Benchmarks of Poly-NL layers and zoo models: contenders, sweeps, scaling fits, targets, plots.

``run_bench(BenchSettings.preset_named("quick"))`` runs the quick sweep; see benchmarks/README.md.
"""

from polynl_deploy.bench.runner import run_bench
from polynl_deploy.bench.settings import BenchResult, BenchSettings, Case

__all__ = ["BenchResult", "BenchSettings", "Case", "run_bench"]
