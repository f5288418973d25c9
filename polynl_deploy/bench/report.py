"""Results on disk (CSV, JSON, PNG plots) and the printed summary."""

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

from polynl_deploy.bench.analysis import NONLOCAL_LABELS
from polynl_deploy.bench.settings import MEASUREMENT_COLUMNS, BenchResult, BenchSettings, Measurement
from polynl_deploy.io import atomic_path, make_directory, write_bytes_atomic

NONLOCAL_NAMES = tuple(NONLOCAL_LABELS)
MODEL_BACKEND_LABELS = {"onnxruntime": "ORT", "tensorrt": "TRT"}
PLOT_LAYOUTS = ("maps", "tokens")
TARGET_FORMATS = {"d": "{:.2f}", "e": "{:.0%}"}
"""How each target's figure prints: exponents plain, bandwidth fractions in percent, ratios otherwise as 1.23x."""


def write_csv(measurements: list[Measurement], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MEASUREMENT_COLUMNS)
        writer.writeheader()
        for m in measurements:
            writer.writerow(asdict(m))


def write_json(result: BenchResult, path: Path) -> None:
    document = {
        "settings": asdict(result.settings),
        "machine": result.machine,
        "unavailable": result.unavailable,
        "measurements": [asdict(m) for m in result.measurements],
        "scaling_fits": [asdict(f) for f in result.fits],
        "target_case": asdict(result.target_case) if result.target_case else None,
        "targets": [asdict(t) for t in result.targets],
        "models": [asdict(m) for m in result.models],
        "models_note": result.models_note,
    }
    write_bytes_atomic(path, json.dumps(document, indent=2, default=str).encode())


def _groups(measurements: list[Measurement], layout: str) -> tuple[list[int], list[int]]:
    ok = [m for m in measurements if m.status == "ok" and m.layout == layout]
    return sorted({m.batch for m in ok}), sorted({m.channels for m in ok})


def _series(measurements, layout, batch, channels, contender) -> tuple[list[int], list[float]]:
    points = sorted((m.positions, m.latency_ms) for m in measurements if m.status == "ok" and m.contender == contender
                    and (m.layout, m.batch, m.channels) == (layout, batch, channels))
    return [p for p, _ in points], [t for _, t in points]


def _plot_panels(measurements: list[Measurement], layout: str, path: Path, ylabel: str, draw) -> None:
    """One log-log panel per (batch, C); ``draw(ax, batch, channels)`` adds the lines. Written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches, channels = _groups(measurements, layout)
    figure, axes = plt.subplots(len(batches), len(channels), figsize=(5.5 * len(channels), 4.2 * len(batches)),
                                squeeze=False)
    for row, batch in enumerate(batches):
        for col, c in enumerate(channels):
            ax = axes[row][col]
            draw(ax, batch, c)
            ax.set(title=f"{layout}, batch {batch}, C={c}", xlabel="N (positions)", ylabel=ylabel)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)


def plot_latency(measurements: list[Measurement], layout: str, path: Path) -> bool:
    """Log-log latency vs N, one line per contender, one panel per (batch, C). False if nothing to plot."""
    if not _groups(measurements, layout)[0]:
        return False
    contenders = list(dict.fromkeys(m.contender for m in measurements if m.status == "ok"))

    def draw(ax, batch, c):
        for contender in contenders:
            n, t = _series(measurements, layout, batch, c, contender)
            if n:
                ax.loglog(n, t, marker="o", label=contender,
                          linestyle="--" if contender.startswith(("floor", "nonlocal")) else "-")

    _plot_panels(measurements, layout, path, "latency (ms, best round median)", draw)
    return True


def plot_speedup(measurements: list[Measurement], layout: str, path: Path) -> bool:
    """Speed-up of each Poly-NL contender over the faster NonLocal2d mode at the same size."""
    nonlocal_times: dict[tuple, float] = {}
    for m in measurements:
        if m.status == "ok" and m.contender in NONLOCAL_NAMES:
            key = (m.layout, m.batch, m.channels, m.positions)
            nonlocal_times[key] = min(nonlocal_times.get(key, math.inf), m.latency_ms)
    if not _groups(measurements, layout)[0] or not any(k[0] == layout for k in nonlocal_times):
        return False
    polynl = list(dict.fromkeys(m.contender for m in measurements if m.status == "ok" and m.family == "polynl"))

    def draw(ax, batch, c):
        for contender in polynl:
            n, t = _series(measurements, layout, batch, c, contender)
            pairs = [(p, nonlocal_times[(layout, batch, c, p)] / v) for p, v in zip(n, t)
                     if (layout, batch, c, p) in nonlocal_times]
            if pairs:
                ax.loglog(*zip(*pairs), marker="o", label=contender)

    _plot_panels(measurements, layout, path, "speed-up vs faster NonLocal2d (x)", draw)
    return True


def _plot_paths(out: Path, layout: str) -> tuple[Path, Path]:
    return out / f"latency_vs_n_{layout}.png", out / f"speedup_vs_nonlocal_{layout}.png"


def output_files(settings: BenchSettings) -> list[Path]:
    """Every file ``write_outputs`` may write, to check before the sweep runs."""
    out = settings.output_dir
    plots = [path for layout in PLOT_LAYOUTS for path in _plot_paths(out, layout)] if settings.plots else []
    return [out / "measurements.csv", out / "results.json", *plots]


def write_outputs(result: BenchResult) -> dict[str, Path]:
    """measurements.csv, results.json and the plots in the output directory; their paths by kind."""
    out = make_directory(result.settings.output_dir)
    files = {"csv": out / "measurements.csv", "json": out / "results.json"}
    write_csv(result.measurements, files["csv"])
    if result.settings.plots:
        for layout in PLOT_LAYOUTS:
            latency, speedup = _plot_paths(out, layout)
            if plot_latency(result.measurements, layout, latency):
                files[f"latency_{layout}"] = latency
            if plot_speedup(result.measurements, layout, speedup):
                files[f"speedup_{layout}"] = speedup
    result.files = files
    write_json(result, files["json"])
    return files


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(result: BenchResult, console) -> None:
    """Machine line, unavailable contenders, skips, the targets table, exponents, models, files."""
    from rich.table import Table

    machine = result.machine
    console.print(f"[bold]machine[/]: {machine['cpu_count']} CPUs, {machine['threads']} threads; "
                  f"load average {machine['load_average_start']} at start, {machine['load_average_end']} at end; "
                  f"torch {machine['torch']}, onnxruntime {machine['onnxruntime']}")
    if machine.get("gpu"):
        console.print(f"[bold]GPU[/]: {machine['gpu']} (SM {machine['compute_capability']}, CUDA {machine['cuda']}); "
                      f"{result.settings.dtype}")
    for name, reason in result.unavailable.items():
        console.print(f"[yellow]not run[/] {name}: {reason}", highlight=False)
    skips: dict[tuple[str, str], list[str]] = {}
    for m in result.measurements:
        if m.status != "ok":
            skips.setdefault((m.contender, f"{m.status}: {m.reason}"), []).append(m.case.label())
    for (contender, reason), cases in skips.items():
        console.print(f"[yellow]{contender}[/] {reason} [dim]({len(cases)} size(s): {'; '.join(cases)})[/]",
                      highlight=False)

    if result.target_case and result.targets:
        rounds = result.settings.rounds
        statistic = "medians" if rounds == 1 else f"best of {rounds} round medians"
        table = Table(title=f"targets at {result.target_case.label()} ({statistic})")
        for column in ("", "figure", "measured", "target", "met", "basis"):
            table.add_column(column, overflow="fold")
        for t in result.targets:
            met = "n/a" if t.met is None else ("[green]met" if t.met else "[red]NOT met")
            value = "-" if t.value is None else TARGET_FORMATS.get(t.key, "{:.2f}x").format(t.value)
            table.add_row(f"({t.key})", t.description, value, t.goal, met, t.basis)
        console.print(table)

    if result.fits:
        table = Table(title="fitted scaling exponents (latency ~ N^e)")
        for column in ("contender", "layout", "batch", "C", "e", "sizes"):
            table.add_column(column)
        for f in result.fits:
            table.add_row(f.contender, f.layout, str(f.batch), str(f.channels), f"{f.exponent:.2f}",
                          f"{f.points} (N={f.min_positions}..{f.max_positions})")
        console.print(table)

    if result.models or result.models_note:
        backends = list(dict.fromkeys(name for m in result.models for name in m.backends))
        table = Table(title="zoo models end to end (median ms; speed-up and max |diff| against eager)")
        labels = [MODEL_BACKEND_LABELS.get(b, b) for b in backends]
        for column in ("model", "device", "input", *labels, *(f"eager/{b}" for b in labels[1:]), "max |diff|",
                       "status"):
            table.add_column(column, overflow="fold")
        for m in result.models:
            timings = [m.backends.get(b) for b in backends]
            errors = [f"{t.max_abs_error:.1e}" for t in timings[1:] if t and t.max_abs_error is not None]
            notes = [f"{b}: {t.reason}" for b, t in zip(backends, timings) if t and t.status != "ok"]
            table.add_row(m.model, m.device, "x".join(map(str, (m.batch, *m.input_shape))),
                          *(_ms(t.median_ms if t else None) for t in timings),
                          *("-" if not t or t.eager_over is None else f"{t.eager_over:.2f}x" for t in timings[1:]),
                          " / ".join(errors) or "-", "; ".join([m.status + (f": {m.reason}" if m.reason else "")]
                                                              + notes))
        if result.models:
            console.print(table)
        if result.models_note:
            console.print(f"[yellow]models[/]: {result.models_note}", highlight=False)

    for kind, path in result.files.items():
        console.print(f"wrote {kind}: {path}", highlight=False)
