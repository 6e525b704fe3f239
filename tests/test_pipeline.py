"""End-to-end: the Snakefile on a small config in a temporary directory, and config errors at the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from conftest import REPO, SMALL


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           "--cores", "2", *args], capture_output=True, text=True, env=env, timeout=900)


def small_config() -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["data"]["embedded"] = dict(SMALL)
    cfg["data"].update(crop_size=64, image_size=32, split={"val_fraction": 0.2, "test_fraction": 0.34})
    cfg["test_splits"] = {"all": {"dataset": "brain"}, "3T": {"dataset": "brain", "field_strength": 3.0},
                          "OOD": {"dataset": "ood"}}
    cfg["unet"].update(chans=4, num_pool_layers=2, epochs=2)
    return cfg


def test_snakefile_end_to_end(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(small_config(), sort_keys=False))
    result = snakemake(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results/tables/table1_af8.csv", index_col=0)
    assert list(table.index) == ["Zero-Filled", "U-Net"]
    assert table[["PSNR", "SSIM", "NMSE"]].notna().all().all()
    table3 = pd.read_csv(tmp_path / "results/tables/table3_af8.csv", index_col=0)
    assert list(table3.columns) == ["all", "3T", "OOD"]
    assert (tmp_path / "results/logs/train_unet.log").read_text().count("unet step") >= 1
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
