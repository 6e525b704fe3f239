"""Figures a person looks at: Fig 2 (example reconstructions, zero-filled input, error maps, zoomed patches), the
report's headline forest plot of each method's difference to LDPM, and one training-curve figure per training
stage."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ldpm import LdpmError  # noqa: E402
from ldpm.evaluate import protocol  # noqa: E402
from ldpm.evaluate.tables import METHOD_LABELS, select  # noqa: E402
from ldpm.io import atomic_output, read_images, read_recon, read_table  # noqa: E402


def pick_examples(test_csv: str | Path, n: int, split_filter: dict) -> list[int]:
    """Middle slice of the first volume (by name) of each of the first n subjects matching the filter:
    deterministic, no cherry-picking, and the example sets come from different subjects."""
    meta = select(read_table(test_csv), split_filter, "main")
    first = meta.sort_values("volume").groupby("patient_id", sort=False)["volume"].first()
    volumes = sorted(first)[:n]
    return [int(rows.index[len(rows) // 2]) for _, rows in meta[meta.volume.isin(volumes)].groupby("volume")]


TITLE_CHARS = 24  # characters of a Fig 2 panel title per line (2 inch panels, 7 pt)


def _show(ax, image: np.ndarray, vmax: float, box: tuple[int, int, int], title: str, cmap: str = "gray") -> None:
    """An image with a yellow box and, as an inset in the lower right corner, the box zoomed."""
    y0, x0, size = box
    ax.imshow(image, cmap=cmap, vmin=0, vmax=vmax)
    inset = ax.inset_axes([0.62, 0.0, 0.38, 0.38])
    inset.imshow(image[y0:y0 + size, x0:x0 + size], cmap=cmap, vmin=0, vmax=vmax)
    inset.set_xticks([]), inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor("yellow")
    ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), size, size, fill=False, ec="yellow", lw=0.8))
    ax.set_title(title, fontsize=7)
    ax.set_xticks([]), ax.set_yticks([])


def figure2(test_h5: str | Path, test_csv: str | Path, recons: dict[str, str | Path], out: str | Path, *,
            zero_filled: str | Path, split_filter: dict, n_examples: int = 2, zoom: float = 0.25,
            error_scale: float = 0.2) -> list[list[str]]:
    """The paper's Fig 2 layout, one pair of rows per example set (A, B, …):
    row 1: GT, then each method's reconstruction; row 2: the zero-filled image under GT, then each method's
    error map |recon − GT|. Every panel has a zoomed patch inset. Returns the panel titles, row by row."""
    gt_all = read_images(test_h5)
    meta = read_table(test_csv)
    zf_all = read_recon(zero_filled)
    recon_all = {m: read_recon(p) for m, p in recons.items() if m != "zero_filled"}
    for name, arr in [("zero_filled", zf_all), *recon_all.items()]:
        if arr.shape != gt_all.shape:
            raise LdpmError(f"reconstruction of {name}: shape {arr.shape} != test set {gt_all.shape}; rerun it")
    picks = pick_examples(test_csv, n_examples, split_filter)
    n_cols = 1 + len(recon_all)
    # Long labels ("LDPM, mean of K samples (beyond paper)") wrap to the panel width instead of running into the
    # neighbouring titles; each extra title line gets its own height so rows do not overlap either.
    label_lines = max([len(textwrap.wrap(f"A1 {METHOD_LABELS.get(m, m)}", TITLE_CHARS)) for m in recon_all] + [1])
    fig, axes = plt.subplots(2 * len(picks), n_cols, figsize=(2.0 * n_cols, (4.0 + 0.3 * label_lines) * len(picks)),
                             squeeze=False, layout="constrained")
    titles, sources = [], []
    for row, idx in enumerate(picks):
        letter = chr(ord("A") + row)
        gt = gt_all[idx]
        vmax = float(gt_all[meta.index[meta.volume == meta.volume[idx]]].max())  # fastMRI data range
        h, w = gt.shape
        size = max(4, int(zoom * h))
        box = (h // 2 - size // 2, w // 2 - size // 2, size)
        top, bottom = axes[2 * row], axes[2 * row + 1]
        top_titles = [f"{letter}1 GT\n{meta.acquisition[idx]}, {meta.field_strength[idx]} T"]
        sources.append(f"{letter}: {meta.volume[idx]} slice {meta.slice[idx]}")
        _show(top[0], gt, vmax, box, top_titles[0])
        bottom_titles = [f"Zero-filled\n{protocol.psnr(gt, zf_all[idx], vmax):.2f} dB"]
        _show(bottom[0], zf_all[idx], vmax, box, bottom_titles[0])
        for col, (name, recon) in enumerate(recon_all.items(), start=1):
            label = METHOD_LABELS.get(name, name)
            top_titles.append(textwrap.fill(f"{letter}{col + 1} {label}", TITLE_CHARS)
                              + f"\n{protocol.psnr(gt, recon[idx], vmax):.2f} dB")
            _show(top[col], recon[idx], vmax, box, top_titles[-1])
            bottom_titles.append(textwrap.fill(f"error {label}", TITLE_CHARS))
            _show(bottom[col], np.abs(recon[idx] - gt), error_scale * vmax, box, bottom_titles[-1], cmap="inferno")
        titles += [top_titles, bottom_titles]
    width = 28 * n_cols  # characters that fit across the figure at this font size
    fig.suptitle(textwrap.fill(f"GT and reconstructions (slice PSNR); below: zero-filled input and error maps "
                               f"|recon − GT| (0–{error_scale:.0%} of the volume max)", width), fontsize=7)
    fig.supxlabel(textwrap.fill("; ".join(sources), width), fontsize=6)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=130, format=Path(out).suffix.lstrip(".") or "png")
    plt.close(fig)
    return titles


FOREST_METRICS = {"psnr": "PSNR (dB)", "ssim": "SSIM"}  # the headline's panels: the paper's two metrics


def forest_plot(stats_csv: str | Path, out_png: str | Path, *, protocol_label: str = "",
                confidence: float | None = None) -> list[str]:
    """The report's headline, from one protocol's statistics table (ldpm.evaluate.stats): per method, the paired
    difference LDPM − method (mean over test subjects, `mean_diff_vs_ref`, > 0: LDPM better for PSNR and SSIM)
    with its bootstrap CI over subjects, one panel per metric, one line per method in the table's order (any number
    of methods). Filled marker: Holm-adjusted p < 0.05 (within the row's Holm family); open: not significant; a
    row without a test (LDPM not run, identical results) says so instead of a marker. Returns the method labels,
    top to bottom."""
    from matplotlib.lines import Line2D

    from ldpm.evaluate.stats import ALPHA

    stats = read_table(stats_csv)
    reference = set(stats.loc[stats.note == "reference", "method"])
    methods = [m for m in dict.fromkeys(stats["method"]) if m not in reference]
    labels = [textwrap.fill(METHOD_LABELS.get(m, m), 24) for m in methods]
    metrics = [k for k in FOREST_METRICS if k in set(stats["metric"])]
    if not methods or not metrics:
        raise LdpmError(f"{stats_csv}: no method compared with LDPM on PSNR or SSIM; rerun the stats rule")
    rows = stats.set_index(["method", "metric"])
    y = np.arange(len(methods))[::-1]  # first method on top
    height = 1.4 + 0.45 * len(methods)
    fig, axes = plt.subplots(1, len(metrics), figsize=(10, height), sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        ax.axvline(0, color="0.5", lw=0.8)
        for yi, method in zip(y, methods):
            row = rows.loc[(method, metric)]
            diff = row["mean_diff_vs_ref"]
            if np.isnan(diff):
                note = row["note"] if isinstance(row["note"], str) else "no test"
                ax.text(0, yi, f"  {note}", va="center", fontsize=7, color="0.4")
                continue
            significant = row["p_holm"] < ALPHA  # NaN (no test) compares False: open marker
            err = [[max(diff - row["diff_ci_low"], 0)], [max(row["diff_ci_high"] - diff, 0)]]
            ax.errorbar(diff, yi, xerr=err, fmt="o", color="k", mfc="k" if significant else "white", ms=6,
                        capsize=3, lw=1.2)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_ylim(-0.7, len(methods) - 0.3)
        ax.set_xlabel(f"{FOREST_METRICS[metric]}: LDPM − method  (> 0: LDPM better)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", color="0.9")
    n = int(stats["n_subjects"].max() if stats["n_subjects"].notna().any() else stats["subjects"].max())
    level = f"{confidence:.0%} " if confidence else ""
    fig.suptitle(f"Difference to LDPM (Ours){', ' + protocol_label if protocol_label else ''}: mean over {n} test "
                 f"subjects with {level}bootstrap CI", fontsize=9)
    legend = [Line2D([], [], marker="o", color="k", mfc="k", ls="none", label=f"Holm-adjusted p < {ALPHA:g}"),
              Line2D([], [], marker="o", color="k", mfc="white", ls="none", label=f"Holm-adjusted p ≥ {ALPHA:g}")]
    fig.legend(handles=legend, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.3 / height, 1, 1))  # room for the legend below the panels
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(out_png).suffix.lstrip(".") or "png")
    plt.close(fig)
    return labels


def training_curves(curve_csv: str | Path, out_png: str | Path, title: str) -> dict[str, list[str]]:
    """One stage's training curve from its `<model>.curve.csv` (`ldpm.train.Trainer.curve`: step, epoch, name,
    value): left, the per-epoch mean training losses vs step (log scale when all positive); right, the validation
    numbers vs step (a second metric on its own right-hand axis). Constant series (on/off flags, a term that is
    switched off) carry no curve and are named in a note instead. Returns the plotted series per panel."""
    import pandas as pd

    frame = read_table(curve_csv)
    missing = {"step", "epoch", "name", "value"} - set(frame.columns)
    if missing:
        raise LdpmError(f"{curve_csv}: not a training-curve CSV (missing columns {sorted(missing)}); rerun the "
                        f"training rule that writes it")
    series = {name: rows.sort_values("step") for name, rows in frame.groupby("name", sort=True)}
    train = {n[len("train_"):]: r for n, r in series.items() if n.startswith("train_")}
    val = {n[len("val_"):]: r for n, r in series.items() if n.startswith("val_")}
    constant = [n for n, r in train.items() if len(r) > 1 and r["value"].nunique() == 1]
    train = {n: r for n, r in train.items() if n not in constant}

    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in train.items():
        ax_t.plot(rows["step"], rows["value"], marker=".", label=name)
    values = pd.concat([r["value"] for r in train.values()]) if train else pd.Series(dtype=float)
    if len(values) and (values > 0).all():
        ax_t.set_yscale("log")
    ax_t.set_xlabel("step")
    ax_t.set_ylabel("training loss (epoch mean)")
    ax_t.set_title("training", fontsize=9)
    if train:
        ax_t.legend(fontsize=7)
    if constant:
        note = ", ".join(f"{n}={_first_value(series, 'train_' + n):.3g}" for n in constant)
        ax_t.text(0.01, 0.01, f"constant: {note}", transform=ax_t.transAxes, fontsize=6, color="0.4", va="bottom")

    plotted_val = list(val)
    if not val:
        ax_v.text(0.5, 0.5, "no validation numbers\n(no validation file, or validation_slices = 0)",
                  ha="center", va="center", fontsize=8, transform=ax_v.transAxes)
        ax_v.set_xticks([]), ax_v.set_yticks([])
    else:
        axes = [ax_v] if len(val) != 2 else [ax_v, ax_v.twinx()]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        lines = []
        for i, (name, rows) in enumerate(val.items()):
            ax, color = axes[min(i, len(axes) - 1)], colors[i % len(colors)]
            last = rows.iloc[-1]
            best = rows.loc[rows["value"].idxmax() if _higher_is_better(name) else rows["value"].idxmin()]
            lines += ax.plot(rows["step"], rows["value"], marker="o", ms=3, color=color,
                             label=f"{name}: final {last['value']:.4g}, best {best['value']:.4g} "
                                   f"(epoch {int(best['epoch'])})")
            ax.plot([best["step"]], [best["value"]], marker="*", ms=9, color=color, ls="none")
        if len(axes) == 2:
            for i, (ax, name) in enumerate(zip(axes, val)):
                ax.set_ylabel(f"val {name}", color=colors[i])
        else:
            ax_v.set_ylabel("validation")
        ax_v.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="best")
        ax_v.set_xlabel("step")
    ax_v.set_title("validation (star: best epoch; final weights = last point)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(out_png).suffix.lstrip(".") or "png")
    plt.close(fig)
    return {"train": list(train), "val": plotted_val}


def _first_value(series, name: str) -> float:
    return float(series[name]["value"].iloc[0])


def _higher_is_better(metric: str) -> bool:
    return metric in {"psnr", "ssim"}
