"""The protocol gap (ldpm.evaluate.gap): each method under the magnitude vs the multicoil measurement.

Synthetic per-volume metrics, 3 methods × 6 subjects (one volume each) × 2 measurements; every expected number is
computed here with plain numpy from the same arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ldpm import LdpmError
from ldpm.evaluate.gap import protocol_gap

METHODS = ["zero_filled", "unet", "ldpm"]
SUBJECTS = [f"s{i}" for i in range(6)]
VOLUMES = [f"v{i}" for i in range(6)]
# PSNR per subject. Under magnitude LDPM > U-Net > zero-filled; under multicoil U-Net > LDPM (ranks change).
PSNR = {("zero_filled", "magnitude"): [20.0, 21.0, 22.0, 23.0, 24.0, 25.0],
        ("zero_filled", "multicoil"): [19.0, 20.5, 21.0, 22.5, 23.0, 24.5],
        ("unet", "magnitude"): [28.0, 29.0, 27.0, 30.0, 28.5, 29.5],
        ("unet", "multicoil"): [26.0, 27.5, 24.0, 28.0, 25.0, 27.0],
        ("ldpm", "magnitude"): [30.0, 31.0, 29.0, 32.0, 30.5, 31.5],
        ("ldpm", "multicoil"): [25.0, 26.0, 25.5, 27.0, 25.0, 26.0]}
# SSIM: under magnitude LDPM > U-Net > zero-filled; under multicoil zero-filled > LDPM > U-Net
SSIM = {("zero_filled", "magnitude"): [0.70, 0.72, 0.71, 0.69, 0.73, 0.70],
        ("zero_filled", "multicoil"): [0.69, 0.71, 0.70, 0.69, 0.72, 0.70],
        ("unet", "magnitude"): [0.85, 0.86, 0.84, 0.88, 0.83, 0.87],
        ("unet", "multicoil"): [0.60, 0.62, 0.55, 0.66, 0.58, 0.61],
        ("ldpm", "magnitude"): [0.90, 0.91, 0.89, 0.92, 0.90, 0.93],
        ("ldpm", "multicoil"): [0.65, 0.70, 0.66, 0.68, 0.64, 0.69]}
SPLIT = {"dataset": "brain"}
COLUMNS = ["method", "metric", "n_subjects", "magnitude", "multicoil", "gap", "gap_ci_low", "gap_ci_high",
           "ldpm_diff_magnitude", "p_holm_magnitude", "ldpm_diff_multicoil", "p_holm_multicoil",
           "rank_magnitude", "rank_multicoil"]
# (method, metric) -> (LDPM − method, Holm-adjusted p), one stats table per measurement; U-Net SSIM absent under
# multicoil
STATS = {"magnitude": {("zero_filled", "psnr"): (8.5, 0.031), ("zero_filled", "ssim"): (0.2, 0.032),
                       ("unet", "psnr"): (2.0, 0.033), ("unet", "ssim"): (0.05, 0.034)},
         "multicoil": {("zero_filled", "psnr"): (3.5, 0.061), ("zero_filled", "ssim"): (-0.03, 0.062),
                       ("unet", "psnr"): (-0.5, 0.063)}}


def volume_rows(method, measurement, psnr, ssim, volumes=VOLUMES, subjects=SUBJECTS, *, af=8, dataset="brain",
                seed=0):
    return [{"volume": v, "dataset": dataset, "acquisition": "AXT2", "field_strength": 3.0, "system_model": "Skyra",
             "patient_id": s, "n_slices": 5, "psnr": p, "ssim": q, "nmse": 0.01, "hfen": 0.1,
             "kspace_residual": 0.0, "method": method, "acceleration": af, "training_seed": seed,
             "measurement": measurement}
            for v, s, p, q in zip(volumes, subjects, psnr, ssim)]


def write_metrics(folder, psnr=PSNR, ssim=SSIM, extra=(), skip=(), legacy=False):
    """One csv per (method, measurement), as the metrics stage writes them, with rows the gap must ignore: another
    AF and an out-of-split subject. `extra`: more rows, `skip`: (method, measurement) files left out, `legacy`:
    the magnitude files without the measurement column (older runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for (method, measurement), values in psnr.items():
        if (method, measurement) in skip:
            continue
        rows[(method, measurement)] = [
            *volume_rows(method, measurement, values, ssim[(method, measurement)]),
            *volume_rows(method, measurement, [1.0] * 6, [0.1] * 6, af=4),  # another AF: ignored
            *volume_rows(method, measurement, [99.0 if measurement == "magnitude" else 1.0], [0.99],
                         ["ood0"], ["o0"], dataset="ood")]  # outside the split filter: ignored
    for row in extra:
        rows.setdefault((row["method"], row["measurement"]), []).append(row)
    paths = []
    for (method, measurement), r in rows.items():
        frame = pd.DataFrame(r)
        if legacy and measurement == "magnitude":
            frame = frame.drop(columns="measurement")
        path = folder / f"{method}_{measurement}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def write_stats(path, values):
    rows = [{"method": "ldpm", "metric": k, "mean": 1.0, "note": "reference"} for k in ("psnr", "ssim")]
    rows += [{"method": m, "metric": k, "mean": 1.0, "mean_diff_vs_ref": d, "p": p / 2, "p_holm": p,
              "holm_family": "paper", "note": ""} for (m, k), (d, p) in values.items()]
    columns = ["method", "metric", "mean", "ci_low", "ci_high", "volumes", "subjects", "n_subjects",
               "mean_diff_vs_ref", "diff_ci_low", "diff_ci_high", "median_diff_vs_ref", "p", "p_holm", "p_min",
               "mdd", "holm_family", "note"]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


@pytest.fixture
def stats_files(tmp_path):
    return {name: write_stats(tmp_path / f"stats_{name}_random_af8.csv", STATS[name]) for name in STATS}


def run(tmp_path, metrics, stats_files, stem="gap_random_af8", **kw):
    kw = {"mask_type": "random", "acceleration": 8, "n_boot": 2000, **kw}
    return protocol_gap(metrics, stats_files, METHODS, SPLIT, tmp_path / "out" / stem, **kw)


def numpy_ci(diff, n_boot=2000, confidence=0.95, seed=0):
    """Percentile bootstrap over subjects: the draws of numpy's default_rng(seed), subjects in sorted order."""
    diff = np.asarray(diff, dtype=float)
    means = diff[np.random.default_rng(seed).integers(0, len(diff), size=(n_boot, len(diff)))].mean(1)
    alpha = (1 - confidence) / 2
    return np.quantile(means, [alpha, 1 - alpha])


def test_gap_is_the_mean_of_paired_per_subject_differences(tmp_path, stats_files):
    table = run(tmp_path, write_metrics(tmp_path / "m"), stats_files)
    assert list(table.columns) == COLUMNS
    assert [(m, k) for m, k in zip(table.method, table.metric)] == [(m, k) for m in METHODS for k in ("psnr", "ssim")]
    saved = pd.read_csv(tmp_path / "out" / "gap_random_af8.csv")
    pd.testing.assert_frame_equal(saved, table.reset_index(drop=True), check_dtype=False,
                                  check_exact=True)  # full precision
    rows = table.set_index(["method", "metric"])
    for (method, metric), row in rows.iterrows():
        values = PSNR if metric == "psnr" else SSIM
        mag, mc = np.array(values[(method, "magnitude")]), np.array(values[(method, "multicoil")])
        assert row["n_subjects"] == 6
        assert row["magnitude"] == pytest.approx(mag.mean(), abs=1e-12)
        assert row["multicoil"] == pytest.approx(mc.mean(), abs=1e-12)
        assert row["gap"] == pytest.approx(np.mean(mc - mag), abs=1e-12)
    assert rows.loc[("unet", "psnr"), "gap"] == pytest.approx(-2.4166666666666665)  # by hand: -14.5 / 6


def test_volumes_scored_under_one_measurement_are_not_paired(tmp_path, stats_files):
    """A subject scored under magnitude only, and a second volume of s0 under multicoil only: both count in that
    measurement's mean, neither in the gap."""
    extra = [*volume_rows("unet", "magnitude", [50.0], [0.99], ["v6"], ["s6"]),
             *volume_rows("unet", "multicoil", [10.0], [0.10], ["v0b"], ["s0"])]
    table = run(tmp_path, write_metrics(tmp_path / "m", extra=extra), stats_files)
    row = table.set_index(["method", "metric"]).loc[("unet", "psnr")]
    mag, mc = np.array(PSNR[("unet", "magnitude")]), np.array(PSNR[("unet", "multicoil")])
    assert row["n_subjects"] == 6
    assert row["gap"] == pytest.approx(np.mean(mc - mag), abs=1e-12)
    lo, hi = numpy_ci(mc - mag)
    assert (row["gap_ci_low"], row["gap_ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert row["magnitude"] == pytest.approx(np.append(mag, 50.0).mean(), abs=1e-12)  # 7 subjects
    s0 = (mc[0] + 10.0) / 2  # s0's two multicoil volumes averaged first
    assert row["multicoil"] == pytest.approx(np.append(s0, mc[1:]).mean(), abs=1e-12)
    assert row["gap"] != pytest.approx(row["multicoil"] - row["magnitude"])


def test_gap_ci_is_a_seeded_bootstrap_over_subjects_and_narrows_with_less_spread(tmp_path, stats_files):
    table = run(tmp_path, write_metrics(tmp_path / "m"), stats_files, n_boot=3000, confidence=0.9, seed=5)
    for (method, metric), row in table.set_index(["method", "metric"]).iterrows():
        values = PSNR if metric == "psnr" else SSIM
        diff = np.array(values[(method, "multicoil")]) - np.array(values[(method, "magnitude")])
        lo, hi = numpy_ci(diff, 3000, 0.9, 5)
        assert (row["gap_ci_low"], row["gap_ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
        assert row["gap_ci_low"] <= row["gap"] <= row["gap_ci_high"]
    # the same means with a tenth of the spread of the per-subject differences: a narrower interval
    narrow = dict(PSNR)
    for method in METHODS:
        mag = np.array(PSNR[(method, "magnitude")])
        diff = np.array(PSNR[(method, "multicoil")]) - mag
        narrow[(method, "multicoil")] = list(mag + diff.mean() + 0.1 * (diff - diff.mean()))
    tight = run(tmp_path, write_metrics(tmp_path / "n", psnr=narrow), stats_files, stem="narrow")
    wide = run(tmp_path, write_metrics(tmp_path / "m"), stats_files, stem="wide")
    for t, w in zip(tight[tight.metric == "psnr"].itertuples(), wide[wide.metric == "psnr"].itertuples()):
        assert t.gap == pytest.approx(w.gap, abs=1e-9)
        assert t.gap_ci_low <= t.gap <= t.gap_ci_high
        assert t.gap_ci_high - t.gap_ci_low < 0.5 * (w.gap_ci_high - w.gap_ci_low)


def test_ldpm_statistics_come_from_each_measurements_own_stats_table(tmp_path, stats_files):
    metrics = write_metrics(tmp_path / "m")
    rows = run(tmp_path, metrics, stats_files).set_index(["method", "metric"])
    for name in ("magnitude", "multicoil"):
        for (method, metric), (diff, p) in STATS[name].items():
            assert rows.loc[(method, metric), f"ldpm_diff_{name}"] == diff
            assert rows.loc[(method, metric), f"p_holm_{name}"] == p
    assert np.isnan(rows.loc[("unet", "ssim"), "ldpm_diff_multicoil"])  # absent from the multicoil table
    assert np.isnan(rows.loc[("unet", "ssim"), "p_holm_multicoil"])
    ldpm = rows.loc["ldpm", ["ldpm_diff_magnitude", "p_holm_magnitude", "ldpm_diff_multicoil", "p_holm_multicoil"]]
    assert ldpm.isna().all().all()  # the reference itself
    swapped = {"magnitude": stats_files["multicoil"], "multicoil": stats_files["magnitude"]}
    other = run(tmp_path, metrics, swapped, stem="swapped").set_index(["method", "metric"])
    for a, b in [("magnitude", "multicoil"), ("multicoil", "magnitude")]:
        for column in ("ldpm_diff", "p_holm"):
            pd.testing.assert_series_equal(other[f"{column}_{a}"], rows[f"{column}_{b}"], check_names=False)


def test_ranks_by_each_measurements_mean_higher_is_better(tmp_path, stats_files):
    table = run(tmp_path, write_metrics(tmp_path / "m"), stats_files)
    for metric, values in (("psnr", PSNR), ("ssim", SSIM)):
        rows = table[table.metric == metric].set_index("method")
        for name in ("magnitude", "multicoil"):
            means = np.array([np.mean(values[(m, name)]) for m in METHODS])
            expected = 1 + np.argsort(np.argsort(-means))  # 1 = the highest mean
            assert rows.loc[METHODS, f"rank_{name}"].tolist() == expected.tolist()
    psnr = table[table.metric == "psnr"].set_index("method")
    assert psnr.rank_magnitude.to_dict() == {"zero_filled": 3, "unet": 2, "ldpm": 1}  # by hand
    assert psnr.rank_multicoil.to_dict() == {"zero_filled": 3, "unet": 1, "ldpm": 2}


def test_a_method_without_one_measurement_is_an_error_naming_it(tmp_path, stats_files):
    metrics = write_metrics(tmp_path / "m", skip={("unet", "multicoil")})
    with pytest.raises(LdpmError) as err:
        run(tmp_path, metrics, stats_files)
    message = str(err.value)
    assert "'unet'" in message and "'multicoil'" in message and "measurements: [magnitude, multicoil]" in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing partial
    # a missing statistics table: its file named
    with pytest.raises(LdpmError, match="stats_gone.csv"):
        run(tmp_path, write_metrics(tmp_path / "ok"), {**stats_files, "multicoil": tmp_path / "stats_gone.csv"})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_older_files_without_a_measurement_column_are_magnitude(tmp_path, stats_files):
    new = run(tmp_path, write_metrics(tmp_path / "new"), stats_files, stem="new")
    old = run(tmp_path, write_metrics(tmp_path / "old", legacy=True), stats_files, stem="old")
    pd.testing.assert_frame_equal(old, new)
    with pytest.raises(LdpmError, match="'multicoil'"):  # only older files: nothing under multicoil
        run(tmp_path, [p for p in write_metrics(tmp_path / "only", legacy=True) if "magnitude" in p.name],
            stats_files, stem="only")


def test_training_seeds_are_averaged_within_each_measurement(tmp_path, stats_files):
    """A second training seed of LDPM: 2 dB better under magnitude, 2 dB worse under multicoil than seed 0."""
    extra = [*volume_rows("ldpm", "magnitude", np.add(PSNR[("ldpm", "magnitude")], 2.0),
                          SSIM[("ldpm", "magnitude")], seed=1),
             *volume_rows("ldpm", "multicoil", np.add(PSNR[("ldpm", "multicoil")], -2.0),
                          SSIM[("ldpm", "multicoil")], seed=1)]
    row = run(tmp_path, write_metrics(tmp_path / "m", extra=extra), stats_files).set_index(
        ["method", "metric"]).loc[("ldpm", "psnr")]
    mag, mc = np.mean(PSNR[("ldpm", "magnitude")]) + 1.0, np.mean(PSNR[("ldpm", "multicoil")]) - 1.0
    assert (row["magnitude"], row["multicoil"], row["gap"]) == pytest.approx((mag, mc, mc - mag), abs=1e-12)


def test_outputs_are_byte_identical_across_runs_and_the_figure_opens(tmp_path, stats_files):
    metrics = write_metrics(tmp_path / "m")
    protocol_gap(metrics, stats_files, METHODS, SPLIT, tmp_path / "a" / "gap", mask_type="random", acceleration=8)
    protocol_gap(metrics, stats_files, METHODS, SPLIT, tmp_path / "b" / "gap", mask_type="random", acceleration=8)
    for suffix in (".csv", ".md", ".png"):
        assert (tmp_path / "a" / f"gap{suffix}").read_bytes() == (tmp_path / "b" / f"gap{suffix}").read_bytes()
    with Image.open(tmp_path / "a" / "gap.png") as image:
        image.verify()
    with Image.open(tmp_path / "a" / "gap.png") as image:
        assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 150


def test_markdown_has_a_caption_line_then_one_row_per_method_and_metric(tmp_path, stats_files):
    run(tmp_path, write_metrics(tmp_path / "m"), stats_files, mask_type="equispaced", acceleration=8)
    lines = (tmp_path / "out" / "gap_random_af8.md").read_text().splitlines()
    assert lines[0].startswith("Protocol gap, AF 8, equispaced masks") and lines[1] == ""
    body = [ln for ln in lines[2:] if ln.startswith("|")][2:]  # header and rule left out
    assert [ln.split("|")[1].strip() for ln in body] == ["Zero-Filled", "Zero-Filled", "U-Net", "U-Net",
                                                         "LDPM (Ours)", "LDPM (Ours)"]
    unet_psnr = [c.strip() for c in body[2].split("|")[1:-1]]
    lo, hi = numpy_ci(np.subtract(PSNR[("unet", "multicoil")], PSNR[("unet", "magnitude")]))
    assert unet_psnr[:7] == ["U-Net", "PSNR", "6", "28.67", "26.25", f"-2.42 [{lo:.2f}, {hi:.2f}]", "2 → 1"]
    assert unet_psnr[7:] == ["2.00 (0.033)", "-0.50 (0.063)"]
    assert body[5].rstrip("| ").endswith("n/a")  # LDPM's own row: no test against itself


def test_cli_gap_subcommand(tmp_path, stats_files):
    from ldpm.cli import build_parser

    metrics = write_metrics(tmp_path / "m")
    args = build_parser().parse_args(
        ["gap", "--metrics", *map(str, metrics), "--stats-magnitude", str(stats_files["magnitude"]),
         "--stats-multicoil", str(stats_files["multicoil"]), "--methods", '["zero_filled", "unet", "ldpm"]',
         "--split-filter", '{"dataset": "brain"}', "--mask-type", "random", "--acceleration", "8",
         "--n-boot", "500", "--confidence", "0.9", "--seed", "3", "--out-stem", str(tmp_path / "cli" / "gap")])
    args.func(args)
    table = pd.read_csv(tmp_path / "cli" / "gap.csv").set_index(["method", "metric"])
    direct = protocol_gap(metrics, stats_files, METHODS, SPLIT, tmp_path / "direct" / "gap", mask_type="random",
                          acceleration=8, n_boot=500, confidence=0.9, seed=3).set_index(["method", "metric"])
    pd.testing.assert_frame_equal(table, direct, check_dtype=False)
    assert table.loc[("unet", "psnr"), "ldpm_diff_magnitude"] == 2.0
    assert table.loc[("unet", "psnr"), "ldpm_diff_multicoil"] == -0.5
    assert (tmp_path / "cli" / "gap.md").exists() and (tmp_path / "cli" / "gap.png").exists()


def test_means_and_ldpm_columns_agree_with_the_real_stats_tables(tmp_path):
    """The stats stage run on each measurement's rows (two training seeds, an unpaired volume): the gap table's
    per-measurement means are those tables' `mean` (subjects first, seeds averaged), its LDPM columns their
    `mean_diff_vs_ref` / `p_holm`."""
    from ldpm.evaluate.stats import stats_table
    from ldpm.evaluate.tables import load_volume_metrics

    extra = [*volume_rows("unet", "multicoil", [10.0], [0.10], ["v0b"], ["s0"]),
             *volume_rows("ldpm", "magnitude", np.add(PSNR[("ldpm", "magnitude")], 2.0),
                          SSIM[("ldpm", "magnitude")], seed=1)]
    metrics = write_metrics(tmp_path / "m", extra=extra)
    volumes = load_volume_metrics(metrics)
    stats = {}
    for name in ("magnitude", "multicoil"):
        stats_table(volumes[volumes.measurement == name], METHODS, SPLIT, 8, tmp_path / f"stats_{name}", n_boot=200)
        stats[name] = tmp_path / f"stats_{name}.csv"
    rows = run(tmp_path, metrics, stats).set_index(["method", "metric"])
    for name in ("magnitude", "multicoil"):
        table = pd.read_csv(stats[name]).set_index(["method", "metric"])
        for key, row in rows.iterrows():
            assert row[name] == pytest.approx(table.loc[key, "mean"], rel=1e-5)  # the stats csv prints 6 digits
            if key[0] != "ldpm":
                assert row[f"ldpm_diff_{name}"] == table.loc[key, "mean_diff_vs_ref"]
                assert row[f"p_holm_{name}"] == table.loc[key, "p_holm"]
    s0 = (PSNR[("unet", "multicoil")][0] + 10.0) / 2  # by hand: s0's two volumes first, then the subjects
    assert rows.loc[("unet", "psnr"), "multicoil"] == pytest.approx(np.mean([s0, *PSNR[("unet", "multicoil")][1:]]))


def test_an_error_while_writing_leaves_none_of_the_three_files(tmp_path, stats_files, monkeypatch):
    import ldpm.evaluate.gap as gap

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(gap, "figure", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        run(tmp_path, write_metrics(tmp_path / "m"), stats_files)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # no csv, md, png, nor .partial files
