"""How the tables print (issue 20): Table I's best values in bold and per-metric precision, pipes escaped in md,
the classical CS rows, the compute table for a method without weights, p_min / mdd in the statistics, the LDPM
diagnostics a page wide, and Fig 3's csv without an empty header row."""

from __future__ import annotations

import re

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ldpm.evaluate.stats import N_DRAWS, stats_table
from ldpm.evaluate.tables import compute_table, table1, write_table_formats


def md_rows(md: str) -> dict[str, list[str]]:
    """{row label: cells} of the md tables, split on unescaped pipes only (as a markdown renderer does)."""
    rows = {}
    for line in md.splitlines():
        if line.startswith("|") and not set(line) <= set("|:- "):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows[cells[0]] = cells[1:]
    return rows


def table1_volumes() -> pd.DataFrame:
    """Per-volume PSNR / SSIM / NMSE whose means per method are known: U-Net best PSNR, LDPM best SSIM; NMSE of
    Zero-Filled and LDPM equal up to 1e-6 (a tie at the printed precision, both best)."""
    means = {"zero_filled": (18.0, 0.40, 0.05), "cs_tv": (20.0, 0.60, 0.09), "unet": (22.126, 0.70, 0.07),
             "ldpm": (21.5, 0.75, 0.050001)}
    rows = [{"method": m, "acceleration": 8, "volume": f"v{v}", "dataset": "brain", "psnr": p + d, "ssim": s + d / 100,
             "nmse": n} for m, (p, s, n) in means.items() for v, d in enumerate((-0.5, 0.5))]
    return pd.DataFrame(rows)


def test_table1_prints_each_metric_at_its_precision_with_the_best_in_bold(tmp_path):
    perceptual = pd.DataFrame({"method": ["zero_filled", "cs_tv", "unet", "ldpm"], "lpips": [0.4, np.nan, 0.3, 0.2],
                               "rfid": [90.0, np.nan, 50.0, 60.0], "kid": [np.nan, np.nan, 0.01, np.nan],
                               "n_images": 8, "lpips_note": "", "fid_note": ""})
    methods = ["zero_filled", "cs_tv", "cs_wavelet", "unet", "ldpm"]
    table = table1(table1_volumes(), methods, {"dataset": "brain"}, 8, tmp_path / "t1", perceptual)
    assert list(table.index) == ["Zero-Filled", "CS-TV", "U-Net", "LDPM (Ours)"], "CS rows labelled, in config order"
    rows = md_rows((tmp_path / "t1.md").read_text())
    header = rows.pop("")
    cells = {label: dict(zip(header, r)) for label, r in rows.items()}
    assert cells["U-Net"]["PSNR"] == "**22.13**" and cells["LDPM (Ours)"]["PSNR"] == "21.50", "2 decimals, max bold"
    assert cells["LDPM (Ours)"]["SSIM"] == "**0.7500**" and cells["U-Net"]["SSIM"] == "0.7000"
    assert cells["Zero-Filled"]["NMSE"] == cells["LDPM (Ours)"]["NMSE"] == "**0.0500**", "min bold, ties as printed"
    # lowest LPIPS / rFID bold, n/a rows ignored; a column with one value has no best
    assert cells["LDPM (Ours)"]["LPIPS"] == "**0.2000**" and cells["CS-TV"]["LPIPS"] == "n/a"
    assert cells["U-Net"]["rFID"] == "**50.00**" and cells["U-Net"]["KID"] == "0.0100"
    assert cells["U-Net"]["volumes"] == "2"
    tex = (tmp_path / "t1.tex").read_text()
    assert r"U-Net & \textbf{22.13} & 0.7000 & 0.0700 & 0.3000 & \textbf{50.00} & 0.0100 & 2 \\" in tex
    csv = pd.read_csv(tmp_path / "t1.csv", index_col=0)
    assert csv.loc["U-Net", "PSNR"] == pytest.approx(22.126, abs=1e-12), "the csv keeps full precision"


def test_markdown_escapes_pipes_and_latex_its_special_characters(tmp_path):
    table = pd.DataFrame({"all PSNR": [20.123, 21.0], "all δ": [0.001, 0.002]},
                         index=["sketch |DC(R(x_u))|", "50% & more"])
    write_table_formats(table, tmp_path / "d", "caption with x_u")
    md = (tmp_path / "d.md").read_text()
    assert r"sketch \|DC(R(x_u))\|" in md
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert {len(re.findall(r"(?<!\\)\|", line)) for line in lines} == {4}, "every row: label + 2 cells"
    tex = (tmp_path / "d.tex").read_text()
    assert r"sketch \textbar{}DC(R(x\_u))\textbar{} & 20.1230 & 0.0010 \\" in tex
    assert r"50\% \& more" in tex and r"all $\delta$" in tex and r"caption with x\_u" in tex


def test_compute_table_has_a_row_for_a_method_without_weights(tmp_path, monkeypatch):
    """A CS-like method (no weights, FFTs and elementwise updates only) through the real reconstruct stage: its
    row reads its measured time, and its 0 counted GFLOPs are footnoted as not counted, not as free."""
    import ldpm.reconstruct as rec
    from ldpm.data.masks import make_test_masks
    from ldpm.io import write_images

    size = 32
    gt = np.random.default_rng(0).random((6, size, size)).astype(np.float32)
    meta = pd.DataFrame({"slice_id": [f"v{i // 3}:{i % 3:03d}" for i in range(6)]})
    write_images(tmp_path / "test.h5", gt)
    meta.to_csv(tmp_path / "test.csv", index=False)
    make_test_masks(meta.slice_id.tolist(), size, 4, 0.08, seed=0, out=tmp_path / "masks.npz")

    def cs_like(weights, hp, device):
        assert weights == {}, "no weights"

        def run(meas):
            x, mask, k_u = meas.x_u, meas.mask, meas.k_u
            for _ in range(20):  # gradient steps on ||M F x - k_u||², then soft-thresholding
                residual = mask * torch.fft.fft2(x, norm="ortho") - k_u
                x = x - 0.5 * torch.fft.ifft2(mask * residual, norm="ortho").real
                x = torch.sign(x) * torch.clamp(x.abs() - 1e-3, min=0)
            return x
        return run

    real_resolve = rec.resolve
    monkeypatch.setattr(rec, "resolve", lambda table, name, what: cs_like if name == "cs_tv"
                        else real_resolve(table, name, what))
    for method in ("zero_filled", "cs_tv"):
        rec.reconstruct(method, tmp_path / "test.h5", tmp_path / "test.csv", tmp_path / "masks.npz",
                        tmp_path / f"{method}.h5", batch_size=3, device="cpu")
    table = compute_table([tmp_path / "cs_tv.h5", tmp_path / "zero_filled.h5"],
                          ["zero_filled", "cs_tv", "cs_wavelet", "unet"], 8, tmp_path / "compute")
    assert list(table.index) == ["Zero-Filled", "CS-TV"]
    assert table.loc["CS-TV", "s/slice"] > 0 and table.loc["CS-TV", "GFLOPs/slice"] == 0
    md = (tmp_path / "compute.md").read_text()
    assert "GFLOPs 0 (Zero-Filled, CS-TV): no matmul or convolution, not no work" in md
    assert md_rows(md)["CS-TV"][3] == "n/a", "peak GPU on CPU"


def subject_pairs(diffs: dict[str, list[float]], n_subjects: int) -> pd.DataFrame:
    """One volume per subject; LDPM's PSNR minus each method's is the given per-subject difference."""
    rows = []
    for s in range(n_subjects):
        base = 30.0 + s
        rows.append({"method": "ldpm", "patient_id": f"p{s}", "volume": f"v{s}", "psnr": base})
        rows += [{"method": m, "patient_id": f"p{s}", "volume": f"v{s}", "psnr": base - d[s]} for m, d in diffs.items()]
    return pd.DataFrame(rows).assign(dataset="brain", acceleration=8)


def test_stats_report_the_smallest_p_and_the_minimum_detectable_difference(tmp_path):
    diff = np.array([1.0, 2.0, 0.5, 1.5, 3.0])
    vols = subject_pairs({"unet": diff, "zero_filled": diff + 1}, 5)
    table = stats_table(vols, ["zero_filled", "unet", "ldpm"], {}, 8, tmp_path / "s", n_boot=4000)
    row = table.set_index("method").loc["unet"]
    assert row.p_min == pytest.approx(2 / 2 ** 5)
    # bootstrap SE of a mean of n values ≈ the plug-in sd / sqrt(n); mdd = (z_0.975 + z_0.8) × SE = 2.8016 × SE
    assert row.mdd == pytest.approx(2.8016 * diff.std() / np.sqrt(5), rel=0.05)
    assert np.isnan(table.set_index("method").loc["ldpm", "mdd"]), "the reference is not a comparison"
    md = (tmp_path / "s.md").read_text()
    above, tests = md.split("Paired sign-flip permutation tests by subject")
    assert "With 5 subjects the smallest two-sided p this test can give is 0.0625" in above
    assert "Column mdd: the minimum detectable difference, 2.80 × the bootstrap standard error" in above
    header = next(line for line in tests.splitlines() if line.startswith("| Method"))
    assert "p_min" in header and "mdd" in header
    # above 16 subjects the p-value is Monte-Carlo: its resolution is the smallest p
    big = stats_table(subject_pairs({"unet": np.linspace(0.5, 2, 20)}, 20), ["unet", "ldpm"], {}, 8, tmp_path / "b",
                      n_boot=200)
    assert big.set_index("method").loc["unet", "p_min"] == pytest.approx(1 / (N_DRAWS + 1))


def test_cs_rows_are_a_holm_family_of_their_own(tmp_path):
    """Adding the CS references beside the paper's methods leaves the paper comparison's adjusted p as it was."""
    rng = np.random.default_rng(2)
    diffs = {m: rng.normal(1, 1, 6) for m in ("zero_filled", "cs_tv", "cs_wavelet", "unet")}
    vols = subject_pairs(diffs, 6)
    full = stats_table(vols, ["zero_filled", "cs_tv", "cs_wavelet", "unet", "ldpm"], {}, 8, tmp_path / "f",
                       n_boot=50).set_index("method")
    paper = stats_table(vols[~vols.method.str.startswith("cs_")], ["zero_filled", "unet", "ldpm"], {}, 8,
                        tmp_path / "p", n_boot=50).set_index("method")
    assert full.loc[["zero_filled", "unet"], "p_holm"].tolist() == pytest.approx(
        paper.loc[["zero_filled", "unet"], "p_holm"].tolist())
    assert set(full.loc[["cs_tv", "cs_wavelet"], "holm_family"]) == {"beyond paper"}


def test_diagnostics_print_a_table_per_quantity_a_page_wide_and_keep_the_csv(tmp_path):
    from ldpm.method.diagnostics import ROWS, write_diagnostics

    splits = ["all", "T1", "OOD"]
    rng = np.random.default_rng(0)
    frame = pd.DataFrame([{"split": s, "row": r, "quantity": q, "psnr": 20 + rng.random(), "ssim": rng.random(),
                           "delta": 0.01 * rng.random(), "volumes": 2} for s in splits for r, q in ROWS.items()])
    write_diagnostics(frame, splits, 8, "random", tmp_path / "diag")
    md = (tmp_path / "diag.md").read_text()
    tables = [t for t in md.split("\n\n") if t.startswith("|")]
    assert len(tables) == 3, "PSNR, SSIM, δ"
    for t in tables:
        rows = md_rows(t)
        labels = [q.replace("|", r"\|") for q in ROWS.values()]  # the sketch row's pipes escaped
        assert list(rows) == ["", *labels] and all(len(r) == len(splits) for r in rows.values())
    sketch = frame[(frame.row == "sketch") & (frame.split == "T1")].iloc[0]
    assert md_rows(tables[0])["sketch \\|DC(R(x_u))\\|"][1] == f"{sketch.psnr:.2f}"
    # the csv as before: a line per row, "<split> PSNR / SSIM / δ" columns, full precision (bench/ldpm_seeds.sh)
    csv = pd.read_csv(tmp_path / "diag.csv", index_col=0)
    assert list(csv.columns) == [f"{s} {q}" for s in splits for q in ("PSNR", "SSIM", "δ")]
    assert csv.index.name == "quantity" and csv.loc[ROWS["sketch"], "T1 PSNR"] == pytest.approx(sketch.psnr, abs=1e-12)


class HalfVAE(torch.nn.Module):
    """A stand-in VAE: latent = 4×4 average, decoder = upsampling (a blurred round trip)."""

    config = SimpleNamespace(scaling_factor=1.0)

    def encode(self, x3):
        latent = F.avg_pool2d(x3[:, :1], 4).repeat(1, 4, 1, 1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: latent))

    def decode(self, z):
        return SimpleNamespace(sample=F.interpolate(z[:, :1], scale_factor=4).expand(-1, 3, -1, -1))


def test_fig3_csv_renders_in_the_report_without_an_empty_header_row(tmp_path, monkeypatch):
    """Fig 3's csv as `figure3` writes it, on the report page: a header row and a row per VAE, nothing else (the
    full run's page had an extra header row, "vae" and empty cells)."""
    from ldpm.evaluate.ablations import figure3
    from ldpm.evaluate.report import table_html
    from ldpm.io import write_images
    from ldpm.method import components

    rng = np.random.default_rng(0)
    write_images(tmp_path / "test.h5", rng.random((6, 32, 32)).astype(np.float32))
    pd.DataFrame({"slice_id": [f"v{i // 3}:{i % 3:03d}" for i in range(6)], "volume": [f"v{i // 3}" for i in range(6)],
                  "patient_id": [f"p{i // 3}" for i in range(6)], "dataset": "brain", "acquisition": "AXT1",
                  "field_strength": 3.0}).to_csv(tmp_path / "test.csv", index=False)
    monkeypatch.setattr(components, "pretrained_vae", lambda weights, hp: HalfVAE())
    monkeypatch.setattr(components, "load_vae", lambda path, hp: HalfVAE())
    figure3(tmp_path / "test.h5", tmp_path / "test.csv", {"mrvae": "unused"}, {}, tmp_path / "fig3.png",
            tmp_path / "fig3_vae.csv", split_filter={"dataset": "brain"})
    page = table_html(tmp_path / "fig3_vae.csv")
    assert page.count("<tr") == 3, "one header row and a row per VAE"
    assert "natural-image VAE" in page and "MR-VAE" in page and "<th></th>" not in page
