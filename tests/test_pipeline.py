"""End-to-end: the Snakefile on a small config in a temporary directory, and config errors at the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from conftest import REPO, SMALL

from ldpm.evaluate.tables import METHOD_LABELS


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    # An empty torch hub cache: the perceptual metrics must read n/a here even where a user has the weights.
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                        "TORCH_HOME": str(workdir / "torch_home")}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           "--cores", "2", *args], capture_output=True, text=True, env=env, timeout=900)


def small_config() -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["data"]["embedded"] = dict(SMALL)
    cfg["data"].update(crop_size=64, image_size=32, split={"val_fraction": 0.2, "test_fraction": 0.34})
    cfg["test_splits"] = {"all": {"dataset": "brain"}, "3T": {"dataset": "brain", "field_strength": 3.0},
                          "OOD": {"dataset": "ood"}}
    cfg["unet"].update(chans=4, num_pool_layers=2, epochs=2)
    cfg["varnet"].update(num_cascades=2, chans=4, pools=2, sens_chans=4, sens_pools=2, epochs=1)
    cfg["swinmr"].update(embed_dim=16, depths=[1], num_heads=[2], batch_size=4, epochs=1)
    cfg["score_mri"].update(batch_size=4, epochs=1, n_steps=3)
    tiny_ldpm = {"vae": {"channels": 8, "norm_num_groups": 4},
                 "unet": {"block_out_channels": [16, 32], "cross_attention_dim": 16, "norm_num_groups": 4},
                 "natural": {"n_patches": 32}, "natural_vae": {"steps": 4}, "natural_unet": {"steps": 4},
                 "sketcher": {"epochs": 1}, "mrvae": {"epochs": 1}, "mrcn": {"epochs": 1}, "sampler": {"num_steps": 3}}
    for block, values in tiny_ldpm.items():
        cfg["ldpm"].setdefault(block, {}).update(values)
    cfg["ldpm"]["ablations_mode"] = "retrain"  # the paper config's mode (config.yaml swaps, for time)
    return cfg


def test_snakefile_end_to_end(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(small_config(), sort_keys=False))
    result = snakemake(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results/tables/table1_af8.csv", index_col=0)
    assert list(table.index) == [METHOD_LABELS[m] for m in small_config()["methods"]]
    assert table[["PSNR", "SSIM", "NMSE"]].notna().all().all()
    table3 = pd.read_csv(tmp_path / "results/tables/table3_af8.csv", index_col=0)
    assert list(table3.columns) == ["all", "3T", "OOD"]
    assert (tmp_path / "results/logs/train_unet.log").read_text().count("unet step") >= 1
    # no backbone weights in weights/ or the hub cache: perceptual cells read n/a, with the footnote saying why
    assert table[["LPIPS", "rFID", "KID"]].isna().all().all()
    md = (tmp_path / "results/tables/table1_af8.md").read_text()
    assert "| n/a     | n/a    | n/a   |" in md and "alexnet-owt-7be5be79.pth not found" in md
    # every table, figure, checkpoint, model and reconstruction has a provenance record; audit reaches raw files
    for out in ["tables/table1_af8.csv", "tables/table3_af8.md", "tables/stats_af8.csv", "figures/fig2_af8.png",
                "recon/unet/af8.h5", "models/unet.safetensors", "checkpoints/unet/last.pt", "data/test.h5"]:
        record = json.loads((tmp_path / f"results/{out}.prov.json").read_text())
        assert record["config_sha256"] and record["git"]["commit"] and record["inputs"], out
    audit = (tmp_path / "results/provenance/audit_af8.txt").read_text()
    assert "results/data/index.csv" in audit and "results/raw/embedded/brain/" in audit and "CHANGED" not in audit
    assert (tmp_path / "results/tables/table2_af8.csv").exists() and (tmp_path / "results/figures/fig3.png").exists()
    page = (tmp_path / "results/report.html").read_text()
    assert all(f"<caption>Table {n}" in page for n in ("I:", "II:", "III:")) and page.count("data:image/png") == 2
    # every output stays under results/ (besides the config, Snakemake's own state and the empty hub cache)
    assert {p.name for p in tmp_path.iterdir()} <= {"config.yaml", ".snakemake", "torch_home", "results"}
    cost = pd.read_csv(tmp_path / "results/tables/compute_af8.csv", index_col=0)
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
