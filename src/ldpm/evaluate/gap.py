"""The protocol gap: how much each method loses (or gains) when it is scored on raw coil k-space (`multicoil`)
instead of k-space simulated from the RSS magnitude image (`magnitude`, the paper's protocol).

Per method and metric (PSNR, SSIM), on the main test split at one mask type and AF:
- the mean over test subjects under each measurement (each subject's volumes averaged first, every volume scored
  under that measurement: the `mean` of that measurement's statistics table) and the method's rank by it;
- the gap multicoil − magnitude: the mean over subjects of the paired per-subject difference, over the volumes
  scored under both measurements only, with a percentile bootstrap CI that resamples subjects
  (`ldpm.evaluate.stats.paired_test`, the same pairing and bootstrap as the LDPM-vs-method tests);
- LDPM − method and its Holm-adjusted p under each measurement, copied from that measurement's statistics table.
Each volume's metrics are first averaged over the training seeds (`seed_averaged`), per measurement.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ldpm import LdpmError  # noqa: E402
from ldpm.evaluate.stats import REFERENCE, bootstrap_ci, paired_test  # noqa: E402
from ldpm.evaluate.tables import METHOD_LABELS, load_volume_metrics, md_escape, seed_averaged, select  # noqa: E402
from ldpm.io import atomic_output, read_table  # noqa: E402

MEASUREMENTS = ("magnitude", "multicoil")  # the paper's protocol first; gap = second − first
GAP_METRICS = {"psnr": "PSNR (dB)", "ssim": "SSIM"}  # higher is better for both
FORMATS = {"psnr": ".2f", "ssim": ".4f"}
STATS_COLUMNS = ("method", "metric", "mean_diff_vs_ref", "p_holm")
COLUMNS = ["method", "metric", "n_subjects", "magnitude", "multicoil", "gap", "gap_ci_low", "gap_ci_high",
           "ldpm_diff_magnitude", "p_holm_magnitude", "ldpm_diff_multicoil", "p_holm_multicoil",
           "rank_magnitude", "rank_multicoil"]
FIX = "run both measurements (config `measurements: [magnitude, multicoil]`) so every method is scored under each"


def _files(paths: list) -> str:
    shown = ", ".join(str(p) for p in paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _per_measurement(metrics: list, methods: list[str], split_filter: dict, acceleration: int,
                     mask_type: str) -> dict[str, pd.DataFrame]:
    """{measurement: seed-averaged per-volume rows of the main split at this AF}; an error naming the method and
    measurement where a method has no rows."""
    volumes = load_volume_metrics(metrics)
    measurement = volumes["measurement"] if "measurement" in volumes.columns else pd.Series(None, volumes.index)
    # older files have no measurement column: the paper's protocol
    volumes = volumes.assign(measurement=measurement.astype(object).where(measurement.notna(), "magnitude"))
    volumes = volumes[volumes.acceleration == acceleration]
    frames = {}
    for name in MEASUREMENTS:
        # seed-averaged per measurement: the two measurements of one volume are never averaged together
        frame = volumes[volumes.measurement == name]
        for step in ("", " on the main test split"):
            missing = [m for m in methods if not (frame.method == m).any()]
            if missing:
                raise LdpmError(f"method '{missing[0]}' has no per-volume metrics under measurement '{name}' at AF "
                                f"{acceleration}, {mask_type} masks{step} in {_files(metrics)}; {FIX}")
            if not step:
                frame = select(seed_averaged(frame), split_filter, "main")
        frames[name] = frame
    return frames


def _ldpm_stats(stats_csvs: dict) -> dict[str, pd.DataFrame]:
    """{measurement: its statistics table indexed by (method, metric)}."""
    out = {}
    for name in MEASUREMENTS:
        if name not in stats_csvs:
            raise LdpmError(f"no statistics table for measurement '{name}' (results/tables/stats_{name}_*.csv); "
                            f"{FIX}")
        path = stats_csvs[name]
        table = read_table(path)
        missing = [c for c in STATS_COLUMNS if c not in table.columns]
        if missing:
            raise LdpmError(f"{path}: not a statistics table of `ldpm stats` (no column {', '.join(missing)}); "
                            f"rerun the stats rule")
        out[name] = table.drop_duplicates(["method", "metric"]).set_index(["method", "metric"])
    return out


def protocol_gap(metrics: list, stats_csvs: dict, methods: list[str], split_filter: dict, out_stem: str | Path, *,
                 mask_type: str, acceleration: int, n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0, out_png: str | Path | None = None) -> pd.DataFrame:
    """Write `<out_stem>.csv` (full precision), `.md` (caption line, table) and `out_png` (default `<out_stem>.png`:
    dumbbell plot, one panel per metric); return the csv table: one row per method (in `methods` order) × metric
    (PSNR, SSIM)."""
    frames = _per_measurement(metrics, methods, split_filter, acceleration, mask_type)
    stats = _ldpm_stats(stats_csvs)
    rows = []
    for method in methods:
        for metric in GAP_METRICS:
            subs = {name: frames[name][frames[name].method == method] for name in MEASUREMENTS}
            row = {"method": method, "metric": metric}
            # per measurement: the mean over subjects, each subject's volumes averaged first (stats' `mean`)
            row |= {name: bootstrap_ci(subs[name], metric, n_boot, confidence, seed)[0] for name in MEASUREMENTS}
            # the paired difference over volumes scored under both: the two measurements take paired_test's methods
            pair = pd.concat([subs[name].assign(method=name) for name in MEASUREMENTS], ignore_index=True)
            test = paired_test(pair, metric, "multicoil", "magnitude", seed=seed, n_boot=n_boot,
                               confidence=confidence)
            row |= {"n_subjects": test["n_subjects"], "gap": test["mean_diff"], "gap_ci_low": test["diff_ci_low"],
                    "gap_ci_high": test["diff_ci_high"]}
            for name in MEASUREMENTS:
                found = method != REFERENCE and (method, metric) in stats[name].index
                entry = stats[name].loc[(method, metric)] if found else {}
                row[f"ldpm_diff_{name}"] = float(entry["mean_diff_vs_ref"]) if found else np.nan
                row[f"p_holm_{name}"] = float(entry["p_holm"]) if found else np.nan
            rows.append(row)
    table = pd.DataFrame(rows)
    for name in MEASUREMENTS:  # 1 = best among `methods`; higher is better for PSNR and SSIM
        table[f"rank_{name}"] = table.groupby("metric")[name].rank(ascending=False, method="min").astype(int)
    table = table[COLUMNS]
    stem = Path(out_stem)
    # nested: the three files appear together or, on any error, none of them
    with (atomic_output(stem.with_suffix(".csv")) as csv, atomic_output(stem.with_suffix(".md")) as md,
          atomic_output(out_png or stem.with_suffix(".png")) as png):
        table.to_csv(csv, index=False)  # full precision
        md.write_text(markdown(table, mask_type, acceleration, confidence, n_boot))
        figure(table, png, mask_type, acceleration)
    return table


def _fmt(value, spec: str) -> str:
    return "n/a" if pd.isna(value) else format(value, spec)


def markdown(table: pd.DataFrame, mask_type: str, acceleration: int, confidence: float, n_boot: int) -> str:
    shown = pd.DataFrame({
        "Method": [METHOD_LABELS.get(m, m) for m in table.method],
        "Metric": [GAP_METRICS[k].split(" ")[0] for k in table.metric],
        "subjects": table.n_subjects.astype(str),
        "magnitude": [_fmt(v, FORMATS[k]) for v, k in zip(table.magnitude, table.metric)],
        "multicoil": [_fmt(v, FORMATS[k]) for v, k in zip(table.multicoil, table.metric)],
        "gap (multicoil − magnitude) [CI]": [
            f"{_fmt(g, '+' + FORMATS[k])} [{_fmt(lo, FORMATS[k])}, {_fmt(hi, FORMATS[k])}]"
            for g, lo, hi, k in zip(table.gap, table.gap_ci_low, table.gap_ci_high, table.metric)],
        "rank magnitude → multicoil": [f"{a} → {b}" for a, b in zip(table.rank_magnitude, table.rank_multicoil)],
        **{f"LDPM − method, {name} (p_holm)": [
            "n/a" if pd.isna(d) else f"{_fmt(d, FORMATS[k])} ({_fmt(p, '.4g')})"
            for d, p, k in zip(table[f"ldpm_diff_{name}"], table[f"p_holm_{name}"], table.metric)]
           for name in MEASUREMENTS}})
    cells = shown.map(md_escape)
    align = ["left", "left", "right", "right", "right", "right", "left", "right", "right"]
    caption = (f"Protocol gap, AF {acceleration}, {mask_type} masks: each method's mean over the test subjects of "
               f"the main split under the magnitude measurement (k-space simulated from the RSS magnitude image, the "
               f"paper's protocol) and the multicoil measurement (raw coil k-space), each subject's volumes "
               f"averaged first, and its rank among these methods (1 = best); gap = multicoil − magnitude, the mean "
               f"of the paired per-subject differences over the volumes scored under both (subjects: how many) with "
               f"{confidence:.0%} bootstrap CI ({n_boot} resamples of subjects); LDPM − method with its "
               f"Holm-adjusted p from each measurement's statistics table (> 0: LDPM better).")
    return f"{caption}\n\n{cells.to_markdown(index=False, disable_numparse=True, colalign=align)}\n"


def figure(table: pd.DataFrame, out_png: str | Path, mask_type: str, acceleration: int) -> None:
    """Dumbbell plot, one panel per metric: per method a line from its magnitude mean (open circle) to its
    multicoil mean (filled square); the ranks under each measurement on the right (red where they differ)."""
    from matplotlib.lines import Line2D

    methods = list(dict.fromkeys(table.method))
    labels = [textwrap.fill(METHOD_LABELS.get(m, m), 24) for m in methods]
    y = np.arange(len(methods))[::-1]  # first method on top
    height = 1.6 + 0.45 * len(methods)
    fig, axes = plt.subplots(1, len(GAP_METRICS), figsize=(10, height), sharey=True, squeeze=False)
    rows = table.set_index(["method", "metric"])
    for ax, (metric, axis_label) in zip(axes[0], GAP_METRICS.items()):
        for yi, method in zip(y, methods):
            row = rows.loc[(method, metric)]
            ax.plot([row["magnitude"], row["multicoil"]], [yi, yi], color="0.6", lw=2, zorder=1)
            ax.plot(row["magnitude"], yi, "o", color="k", mfc="white", ms=7, zorder=2)
            ax.plot(row["multicoil"], yi, "s", color="tab:red", ms=6, zorder=3)
            ranks = int(row["rank_magnitude"]), int(row["rank_multicoil"])
            changed = ranks[0] != ranks[1]
            ax.annotate(f"rank {ranks[0]} → {ranks[1]}", (1.01, yi),
                        xycoords=("axes fraction", "data"), va="center", fontsize=7,
                        color="tab:red" if changed else "0.4")
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_ylim(-0.7, len(methods) - 0.3)
        ax.set_xlabel(f"{axis_label}: mean over test subjects (higher is better)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", color="0.9")
    fig.suptitle(f"Protocol gap, AF {acceleration}, {mask_type} masks: each method under the magnitude measurement "
                 f"(k-space simulated from the RSS image, the paper's)\nand the multicoil measurement (raw coil "
                 f"k-space); at right its rank among these methods, magnitude → multicoil (red: changed)",
                 fontsize=9)
    legend = [Line2D([], [], marker="o", color="k", mfc="white", ls="none", label="magnitude (paper)"),
              Line2D([], [], marker="s", color="tab:red", ls="none", label="multicoil (raw k-space)")]
    fig.legend(handles=legend, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.3 / height, 0.97, 1))  # room for the legend below, the ranks at right
    try:
        fig.savefig(out_png, dpi=110, format="png")  # figures.py's settings: no varying metadata
    finally:
        plt.close(fig)
