"""Statistics beyond the paper: subject-level bootstrap confidence intervals and paired tests against LDPM.

Per method and metric, over the test volumes of the main split:
- mean over volumes (Table I's number) with a percentile bootstrap CI that resamples subjects (patient_id), not
  volumes, because volumes of one subject are not independent;
- a paired Wilcoxon signed-rank test over volumes of LDPM (method "ldpm") against each other method, with Holm's
  correction across the methods compared on one metric. Without LDPM metrics the tests are skipped and the
  table says so; nothing is filled in.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from ldpm.evaluate.tables import METHOD_LABELS, method_order, select
from ldpm.io import atomic_output, write_table

log = logging.getLogger("ldpm.stats")

METRICS = {"psnr": "PSNR", "ssim": "SSIM", "nmse": "NMSE", "hfen": "HFEN", "kspace_residual": "k-space residual"}
REFERENCE = "ldpm"


def bootstrap_ci(frame: pd.DataFrame, metric: str, n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean over volumes, low, high): resample subjects with replacement, keep all volumes of each drawn subject."""
    per_subject = frame.groupby("patient_id")[metric].agg(["sum", "count"])
    sums, counts = per_subject["sum"].to_numpy(), per_subject["count"].to_numpy()
    draws = np.random.default_rng(seed).integers(0, len(sums), size=(n_boot, len(sums)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(frame[metric].mean()), float(low), float(high)


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (NaN entries are left out of the family and stay NaN)."""
    p = np.asarray(pvalues, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    adjusted = np.full_like(p, np.nan)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid])]):
        running = max(running, min(1.0, (len(valid) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def paired_test(frame: pd.DataFrame, metric: str, reference: str, other: str) -> dict:
    """Wilcoxon signed-rank over the volumes both methods reconstructed; median of (reference − other)."""
    wide = frame.pivot_table(index="volume", columns="method", values=metric).dropna(subset=[reference, other])
    diff = (wide[reference] - wide[other]).to_numpy()
    out = {"n_pairs": len(diff), "median_diff": float(np.median(diff)) if len(diff) else np.nan,
           "wilcoxon_w": np.nan, "p": np.nan, "note": ""}
    if len(diff) < 2 or not np.any(diff):
        out["note"] = "no test: fewer than 2 paired volumes" if len(diff) < 2 else "no test: identical results"
        return out
    res = sps.wilcoxon(wide[reference], wide[other])
    out.update(wilcoxon_w=float(res.statistic), p=float(res.pvalue))
    return out


def stats_table(volumes: pd.DataFrame, methods: list[str], split_filter: dict, acceleration: int,
                stem: str | Path, *, reference: str = REFERENCE, n_boot: int = 2000, confidence: float = 0.95,
                seed: int = 0) -> pd.DataFrame:
    """Write `<stem>.csv` (one row per method × metric) and `<stem>.md`; return the csv table."""
    frame = select(volumes[volumes.acceleration == acceleration], split_filter, "main")
    metrics = [m for m in METRICS if m in frame.columns]
    order = method_order(frame, methods)
    has_reference = reference in order
    rows = []
    for metric in metrics:
        tests = {m: paired_test(frame, metric, reference, m) for m in order if m != reference} \
            if has_reference else {}
        adjusted = dict(zip(tests, holm([t["p"] for t in tests.values()])))
        for method in order:
            sub = frame[frame.method == method]
            mean, low, high = bootstrap_ci(sub, metric, n_boot, confidence, seed)
            row = {"method": method, "metric": metric, "mean": mean, "ci_low": low, "ci_high": high,
                   "volumes": len(sub), "subjects": sub["patient_id"].nunique()}
            if method == reference:
                row["note"] = "reference"
            elif not has_reference:
                row["note"] = f"test vs {reference} skipped: no metrics for method '{reference}' (not run)"
            else:
                t = tests[method]
                row.update(n_pairs=t["n_pairs"], median_diff_vs_ref=t["median_diff"], wilcoxon_w=t["wilcoxon_w"],
                           p=t["p"], p_holm=adjusted[method], note=t["note"])
            rows.append(row)
    table = pd.DataFrame(rows, columns=["method", "metric", "mean", "ci_low", "ci_high", "volumes", "subjects",
                                        "n_pairs", "median_diff_vs_ref", "wilcoxon_w", "p", "p_holm", "note"])
    stem = Path(stem)
    write_table(table, stem.with_suffix(".csv"))
    with atomic_output(stem.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(table, order, metrics, acceleration, reference, has_reference, confidence, n_boot))
    return table


def markdown(table: pd.DataFrame, order: list[str], metrics: list[str], acceleration: int, reference: str,
             has_reference: bool, confidence: float, n_boot: int) -> str:
    label = {m: METHOD_LABELS.get(m, m) for m in order}
    t = table.set_index(["method", "metric"])
    ci = pd.DataFrame({METRICS[k]: [f"{t.loc[(m, k), 'mean']:.4f} [{t.loc[(m, k), 'ci_low']:.4f}, "
                                    f"{t.loc[(m, k), 'ci_high']:.4f}]" for m in order] for k in metrics},
                      index=[label[m] for m in order])
    first = t.xs(metrics[0], level="metric")
    ci["volumes / subjects"] = [f"{first.loc[m, 'volumes']} / {first.loc[m, 'subjects']}" for m in order]
    text = [f"Statistics, AF {acceleration}: mean over test volumes with {confidence:.0%} bootstrap CI "
            f"({n_boot} resamples of subjects)", "", ci.to_markdown(), ""]
    if not has_reference:
        text.append(f"Paired tests of LDPM against each method: skipped, no metrics for method '{reference}' "
                    f"(it is not in config `methods` or has not been run). Nothing is filled in.")
    else:
        tests = table[table.method != reference].copy()
        tests["Method"] = tests.method.map(label)
        tests["Metric"] = tests.metric.map(METRICS)
        tests = tests[["Method", "Metric", "n_pairs", "median_diff_vs_ref", "p", "p_holm", "note"]]
        text += [f"Paired Wilcoxon signed-rank tests over volumes, {label[reference]} vs each method "
                 f"(median difference = {label[reference]} − method; Holm-adjusted over methods per metric)", "",
                 tests.to_markdown(index=False, floatfmt=".4g", missingval="n/a")]
    return "\n".join(text) + "\n"
