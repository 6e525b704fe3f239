"""Statistics beyond the paper: subject-level bootstrap confidence intervals and paired tests against LDPM.

Everything here is at the subject level (patient_id): each method's metric is first averaged over a subject's
volumes, because volumes of one subject are not independent. So the means, their CIs, the paired differences and
the tests all describe the same quantity, and their signs agree. (Table I averages volumes, the fastMRI protocol;
with unequal volumes per subject its numbers can differ from the means here, even in sign.)

Per method and metric, over the test subjects of the main split:
- the mean over subjects with a percentile bootstrap CI that resamples subjects;
- a paired sign-flip permutation test by subject of LDPM (method "ldpm") against each other method, with the mean
  and median of the per-subject differences and a bootstrap CI of their mean (same resampling). The p-value is
  exact (all 2^n sign flips) up to 16 subjects, Monte-Carlo above. Holm's correction runs over the paper's
  comparison (Table I's methods × all metrics); the rows beyond the paper (`BEYOND_PAPER`: LDPM variants and the
  classical CS references) form a family of their own, so adding them does not weaken the paper's comparison.
  Without LDPM metrics the tests are skipped and the table says so; nothing is filled in.
- what each comparison could show at this size: `p_min`, the smallest p the test can give with its n subjects
  (2/2^n exact; 1/(draws+1), the Monte-Carlo resolution, above 16), and `mdd`, the minimum detectable difference
  (z_{1-α/2} + z_{power}) × SE with α = 0.05 two-sided, 80 % power (2.80 × SE) and SE the bootstrap standard error
  of the mean paired difference (the sd of the same bootstrap means its CI comes from): a true difference smaller
  than mdd is more likely missed than found even by a test without a p floor (normal approximation; the bootstrap
  SE of n values is the plug-in sd·sqrt((n-1)/n)/sqrt(n), a little small for few subjects). Where p_min ≥ α the
  sign-flip test detects no difference at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from ldpm.evaluate.tables import METHOD_LABELS, method_order, seed_averaged, select
from ldpm.io import atomic_output, write_table

log = logging.getLogger("ldpm.stats")

METRICS = {"psnr": "PSNR", "ssim": "SSIM", "nmse": "NMSE", "hfen": "HFEN", "kspace_residual": "k-space residual"}
REFERENCE = "ldpm"
EXACT_MAX_SUBJECTS = 16  # 2^16 sign patterns enumerate in well under a second
N_DRAWS = 100_000  # Monte-Carlo sign flips above EXACT_MAX_SUBJECTS
# Rows beyond the paper (LDPM variants of ldpm.method.reconstruct, classical CS references): tested against LDPM in a
# Holm family of their own
BEYOND_PAPER = ("ldpm_final_dc", "ldpm_mean_k", "cs_tv", "cs_wavelet")
ALPHA, POWER = 0.05, 0.8  # what `mdd` is the minimum detectable difference for (two-sided)


def bootstrap_means(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """`n_boot` means of per-subject values, subjects drawn with replacement (empty for no values)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return np.empty(0)
    return values[np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))].mean(1)


def bootstrap_mean(values: np.ndarray, n_boot: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of per-subject values: percentile bootstrap, subjects drawn with replacement."""
    return percentile_ci(values, bootstrap_means(values, n_boot, seed), confidence)


def percentile_ci(values: np.ndarray, means: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """(mean of `values`, low, high): the percentile interval of their bootstrap `means` (NaN for no values)."""
    if len(means) == 0:
        return np.nan, np.nan, np.nan
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(np.mean(values)), float(low), float(high)


def mdd_factor(alpha: float = ALPHA, power: float = POWER) -> float:
    """z_{1-α/2} + z_{power}: the minimum detectable difference in standard errors (2.80 at 0.05 and 80 %)."""
    return NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)


def bootstrap_ci(frame: pd.DataFrame, metric: str, n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean over subjects, low, high): each subject's volumes averaged first, then `bootstrap_mean`."""
    return bootstrap_mean(frame.groupby("patient_id")[metric].mean().to_numpy(), n_boot, confidence, seed)


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


def sign_flip_p(diff: np.ndarray, n_draws: int = N_DRAWS, seed: int = 0) -> float:
    """Two-sided p-value of the mean of paired differences under random sign flips (H0: each difference is
    symmetric about 0). Exact over all 2^n flips for n <= EXACT_MAX_SUBJECTS, else `n_draws` seeded draws."""
    diff = np.asarray(diff, dtype=float)
    n = len(diff)
    if n <= EXACT_MAX_SUBJECTS:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)  # every ±1 pattern once
        null = [signs @ diff]
    else:
        rng = np.random.default_rng(seed)
        null = [rng.choice([-1.0, 1.0], size=(min(10_000, n_draws - i), n)) @ diff  # in chunks: bounded memory
                for i in range(0, n_draws, 10_000)]
    observed = abs(diff.sum())
    tol = 1e-9 * np.abs(diff).sum()  # sums equal to the observed one up to rounding count as "as extreme"
    hits = sum(int(np.count_nonzero(np.abs(x) >= observed - tol)) for x in null)
    # exact: the share of flips as extreme; Monte-Carlo: counting the observed one keeps p valid (never 0)
    return hits / 2 ** n if n <= EXACT_MAX_SUBJECTS else (hits + 1) / (n_draws + 1)


def paired_test(frame: pd.DataFrame, metric: str, reference: str, other: str, n_draws: int = N_DRAWS,
                seed: int = 0, n_boot: int = 2000, confidence: float = 0.95) -> dict:
    """Sign-flip test by subject of (reference − other): over the volumes both methods reconstructed, each method's
    metric is averaged per subject first, because volumes of one subject are not independent pairs. Also the mean
    difference's bootstrap CI over the same subjects (`bootstrap_mean`), the smallest p the test can give with
    these subjects (`min_p`) and the minimum detectable difference (`mdd_factor` × the sd of the same bootstrap
    means)."""
    wide = frame.pivot_table(index=["patient_id", "volume"], columns="method", values=metric)
    wide = wide.reindex(columns=[reference, other]).dropna()
    per_subject = wide.groupby(level="patient_id").mean()
    diff = (per_subject[reference] - per_subject[other]).to_numpy()
    means = bootstrap_means(diff, n_boot, seed)  # one set of draws for the CI and the mdd
    mean, low, high = percentile_ci(diff, means, confidence)
    out = {"n_subjects": len(diff), "mean_diff": mean, "diff_ci_low": low, "diff_ci_high": high,
           "median_diff": float(np.median(diff)) if len(diff) else np.nan, "p": np.nan, "p_min": np.nan,
           "mdd": np.nan, "note": ""}
    if len(diff) < 2 or not np.any(diff):
        out["note"] = "no test: fewer than 2 paired subjects" if len(diff) < 2 else "no test: identical results"
        return out
    out["p_min"] = min_p(len(diff), n_draws)
    out["mdd"] = mdd_factor() * float(np.std(means, ddof=1))
    out["p"] = sign_flip_p(diff, n_draws, seed)
    return out


def min_p(n_subjects: int, n_draws: int = N_DRAWS) -> float:
    """The smallest two-sided p-value the sign-flip test can give with n subjects: 2/2^n exact (all-plus and
    all-minus), 1/(n_draws + 1) above EXACT_MAX_SUBJECTS (the Monte-Carlo resolution)."""
    return 2 / 2 ** n_subjects if n_subjects <= EXACT_MAX_SUBJECTS else 1 / (n_draws + 1)


def stats_table(volumes: pd.DataFrame, methods: list[str], split_filter: dict, acceleration: int,
                stem: str | Path, *, reference: str = REFERENCE, n_boot: int = 2000, confidence: float = 0.95,
                seed: int = 0, mask_type: str = "random") -> pd.DataFrame:
    """Write `<stem>.csv` (one row per method × metric) and `<stem>.md`; return the csv table. Each volume's
    values are first averaged over the training seeds (one seed's luck is not a sample of the method)."""
    frame = select(seed_averaged(volumes[volumes.acceleration == acceleration]), split_filter, "main")
    metrics = [m for m in METRICS if m in frame.columns]
    order = method_order(frame, methods)
    has_reference = reference in order
    others = [m for m in order if m != reference] if has_reference else []
    tests = {(m, k): paired_test(frame, k, reference, m, seed=seed, n_boot=n_boot, confidence=confidence)
             for k in metrics for m in others}
    # Holm over the paper's comparison (every method × metric), so that table keeps its error rate; the rows beyond
    # the paper are a second family, so adding them leaves the paper's adjusted p-values as they were
    adjusted = {}
    for family in (False, True):
        keys = [key for key in tests if (key[0] in BEYOND_PAPER) == family]
        adjusted |= dict(zip(keys, holm([tests[key]["p"] for key in keys])))
    rows = []
    for metric in metrics:
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
                t = tests[(method, metric)]
                row.update(n_subjects=t["n_subjects"], mean_diff_vs_ref=t["mean_diff"],
                           diff_ci_low=t["diff_ci_low"], diff_ci_high=t["diff_ci_high"],
                           median_diff_vs_ref=t["median_diff"], p=t["p"], p_holm=adjusted[(method, metric)],
                           p_min=t["p_min"], mdd=t["mdd"],
                           holm_family="beyond paper" if method in BEYOND_PAPER else "paper", note=t["note"])
            rows.append(row)
    table = pd.DataFrame(rows, columns=["method", "metric", "mean", "ci_low", "ci_high", "volumes", "subjects",
                                        "n_subjects", "mean_diff_vs_ref", "diff_ci_low", "diff_ci_high",
                                        "median_diff_vs_ref", "p", "p_holm", "p_min", "mdd", "holm_family",
                                        "note"])
    stem = Path(stem)
    write_table(table, stem.with_suffix(".csv"))
    with atomic_output(stem.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(table, order, metrics, f"{acceleration}, {mask_type} masks", reference,
                                has_reference, confidence, n_boot))
    return table


def markdown(table: pd.DataFrame, order: list[str], metrics: list[str], protocol: str, reference: str,
             has_reference: bool, confidence: float, n_boot: int) -> str:
    label = {m: METHOD_LABELS.get(m, m) for m in order}
    t = table.set_index(["method", "metric"])
    ci = pd.DataFrame({METRICS[k]: [f"{t.loc[(m, k), 'mean']:.4f} [{t.loc[(m, k), 'ci_low']:.4f}, "
                                    f"{t.loc[(m, k), 'ci_high']:.4f}]" for m in order] for k in metrics},
                      index=[label[m] for m in order])
    first = t.xs(metrics[0], level="metric")
    ci["volumes / subjects"] = [f"{first.loc[m, 'volumes']} / {first.loc[m, 'subjects']}" for m in order]
    text = [f"Statistics, AF {protocol}: mean over test subjects (each subject's volumes averaged first; Table I "
            f"averages volumes) with {confidence:.0%} bootstrap CI ({n_boot} resamples of subjects)", "",
            ci.to_markdown(), ""]
    if not has_reference:
        text.append(f"Paired tests of LDPM against each method: skipped, no metrics for method '{reference}' "
                    f"(it is not in config `methods` or has not been run). Nothing is filled in.")
    else:
        tests = table[table.method != reference].copy()
        families = []
        for name, rows in tests.groupby(tests.method.isin(BEYOND_PAPER), sort=True):
            n_tested = int(rows.p.notna().sum())
            text_family = (f"Holm over {rows.method.nunique()} methods × {len(metrics)} metrics = {len(rows)} tests"
                           + (f" ({len(rows) - n_tested} without a test left out)" if n_tested < len(rows) else ""))
            families.append(text_family if not name else f"the rows beyond the paper a family of their own: "
                                                         f"{text_family}")
        family = "; ".join(families)
        paper_tests = int((~tests.method.isin(BEYOND_PAPER)).sum()) or len(tests)  # the paper's family, if any
        n = int(tests.n_subjects.max())
        tests["Method"] = tests.method.map(label)
        tests["Metric"] = tests.metric.map(METRICS)
        tests["mean diff CI"] = [f"[{lo:.4g}, {hi:.4g}]" if pd.notna(lo) else None
                                 for lo, hi in zip(tests.diff_ci_low, tests.diff_ci_high)]
        tests = tests[["Method", "Metric", "n_subjects", "mean_diff_vs_ref", "mean diff CI", "median_diff_vs_ref", "p",
                       "p_holm", "p_min", "mdd", "note"]]
        floor = min_p(n)
        exact = n <= EXACT_MAX_SUBJECTS
        resolution = "2/2^n, exact test" if exact else "1/(draws + 1), the Monte-Carlo resolution"
        if n >= 2:  # above the table: what these comparisons could show at all
            text += [f"With {n} subjects the smallest two-sided p this test can give is {floor:.4g}"
                     + (", so it cannot reach p < 0.05 however large the difference, and p ≥ 0.05 does not mean "
                        "the methods are alike" if floor >= ALPHA else "")
                     + f" (column p_min: {resolution}). Column mdd: the minimum detectable difference, "
                       f"{mdd_factor():.2f} × the bootstrap standard error of the mean difference "
                       f"((z_{1 - ALPHA / 2:g} + z_{POWER:g}) × SE: {POWER:.0%} power at α = {ALPHA:g} two-sided, "
                       f"normal approximation); a true difference smaller than mdd is more likely missed than found"
                     + (f", and with this p_min the test finds no difference of any size at α = {ALPHA:g}."
                        if floor >= ALPHA else "."), ""]
        text += [f"Paired sign-flip permutation tests by subject, {label[reference]} vs each method (metric averaged "
                 f"over each subject's volumes first; difference = {label[reference]} − method, its mean with a "
                 f"{confidence:.0%} bootstrap CI over subjects; two-sided p, "
                 f"{'exact' if exact else f'{N_DRAWS} Monte-Carlo flips'}; {family})", "",
                 tests.to_markdown(index=False, floatfmt=".4g", missingval="n/a")]
        if n >= 2:
            text += ["", f"After Holm over {paper_tests} tests the smallest adjusted p is "
                         f"{min(1.0, paper_tests * floor):.4g}. The test asks whether the difference is consistent "
                         f"across these {n} subjects; it says nothing about the population of subjects they came from."]
    return "\n".join(text) + "\n"
