"""End-to-end: the Snakefile on a small config in a temporary directory, and config errors at the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from conftest import REPO, small_config, snakemake  # noqa: F401 (re-exported for other test modules)

from ldpm.evaluate.tables import METHOD_LABELS


def test_snakefile_end_to_end(finished_run):
    tmp_path = finished_run
    table = pd.read_csv(tmp_path / "results/tables/table1_magnitude_random_af8.csv", index_col=0)
    assert list(table.index) == [METHOD_LABELS[m] for m in small_config()["methods"]]
    assert table[["PSNR", "SSIM", "NMSE"]].notna().all().all()
    # the image-to-image baselines beat the zero-filled input they start from, on the main split (the samplers run
    # 3 steps here, too few to be held to it; the default pipeline's numbers are in the README)
    regression = [METHOD_LABELS[m] for m in ("unet", "varnet", "swinmr")]
    assert (table.loc[regression, "PSNR"] > table.loc[METHOD_LABELS["zero_filled"], "PSNR"]).all(), table["PSNR"]
    table3 = pd.read_csv(tmp_path / "results/tables/table3_magnitude_random_af8.csv", index_col=0)
    assert list(table3.columns) == ["all", "3T", "OOD"]
    assert (tmp_path / "results/logs/train_unet_seed0.log").read_text().count("unet step") >= 1
    # no backbone weights in weights/ or the hub cache: perceptual cells read n/a, with the footnote saying why
    assert table[["LPIPS", "rFID", "KID"]].isna().all().all()
    md = (tmp_path / "results/tables/table1_magnitude_random_af8.md").read_text()
    assert "| n/a     | n/a    | n/a   |" in md and "alexnet-owt-7be5be79.pth not found" in md
    # every table, figure, checkpoint, model and reconstruction has a provenance record; audit reaches raw files
    for out in ["tables/table1_magnitude_random_af8.csv", "tables/table3_magnitude_random_af8.md", "tables/stats_magnitude_random_af8.csv",
                "figures/fig2_magnitude_random_af8.png", "recon/unet/seed0/magnitude_random_af8.h5", "models/seed0/unet.safetensors",
                "checkpoints/seed0/unet/last.pt", "data/test.h5"]:
        record = json.loads((tmp_path / f"results/provenance/records/{out}.json").read_text())
        assert record["config_sha256"] and record["git"]["commit"] and record["inputs"], out
        assert record["code_version"] or out.startswith("data/"), out
    assert not list((tmp_path / "results").rglob("*.prov.json"))  # records are kept out of the output folders
    audit = (tmp_path / "results/provenance/audit_magnitude_random_af8.txt").read_text()
    assert "results/data/index/brain.csv" in audit and "results/raw/embedded/brain/" in audit and "CHANGED" not in audit
    assert (tmp_path / "results/tables/table2_random_af8.csv").exists()
    assert (tmp_path / "results/figures/fig3.png").exists()
    curves = list((tmp_path / "results/figures/training/seed0").glob("*.png"))  # one per trained model
    assert {p.stem for p in curves} >= {"unet", "varnet", "swinmr", "score_mri", "ldpm_mrvae", "ldpm_mrcn"}
    page = (tmp_path / "results/report.html").read_text()
    assert all(f"<caption>Table {n}" in page for n in ("I:", "II:", "III:"))
    assert page.count("data:image/png") == 3 + len(curves)  # Fig 2, Fig 3, the forest plot, the curves
    # every output stays under results/ (besides the config, Snakemake's own state and the empty hub cache)
    assert {p.name for p in tmp_path.iterdir()} <= {"config.yaml", ".snakemake", "torch_home", "results"}
    cost = pd.read_csv(tmp_path / "results/tables/compute_magnitude_random_af8.csv", index_col=0)
    assert list(cost.index) == list(table.index) and (cost.loc["LDPM (Ours)", "GFLOPs/slice"] > 0)
    report = snakemake(tmp_path, "--report", "results/snakemake_report.html")
    assert report.returncode == 0 and (tmp_path / "results/snakemake_report.html").stat().st_size > 100_000, \
        report.stderr[-2000:]
    # nothing to do on a second run
    again = snakemake(tmp_path, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_config_typo_is_one_line_error_naming_the_key(tmp_path):
    cfg = small_config()
    cfg["unet"]["epocs"] = 3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert "config key unet.epocs: unknown key" in result.stderr
    assert not (tmp_path / "results").exists()
