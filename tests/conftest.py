"""Shared fixtures: one small embedded dataset per test session, indexed and preprocessed once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SMALL = dict(n_subjects=6, volumes_per_subject=2, slices_per_volume=5, n_coils=3, matrix=64, ood_subjects=1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory) -> Path:
    from ldpm.data.embedded import generate_dataset

    out = tmp_path_factory.mktemp("raw")
    generate_dataset(out, seed=0, **SMALL)
    return out


@pytest.fixture(scope="session")
def datasets(raw_dir) -> dict:
    return {"brain": {"role": "in_distribution", "paths": [str(raw_dir / "brain")]},
            "ood": {"role": "ood", "paths": [str(raw_dir / "ood")]}}


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, datasets) -> Path:
    """index.csv and {train,val,test}.{h5,csv} for the small dataset, 32x32 images."""
    from ldpm.data.preprocess import build_index, preprocess

    out = tmp_path_factory.mktemp("data")
    build_index(datasets, [], out / "index.csv")
    preprocess(out / "index.csv", out, crop_size=64, image_size=32, drop_last_slices=3,
               val_fraction=0.2, test_fraction=0.34, seed=0)
    return out


def snakemake(workdir: Path, *args: str, env: dict | None = None, cores: int | None = 2,
              cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    # An empty torch hub cache: the perceptual metrics must read n/a here even where a user has the weights.
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                        "TORCH_HOME": str(workdir / "torch_home")} | (env or {})
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           *(["--cores", str(cores)] if cores else []), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)


def small_config() -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["data"]["embedded"] = dict(SMALL)
    cfg["data"].update(crop_size=64, image_size=32, split={"val_fraction": 0.2, "test_fraction": 0.34})
    cfg["test_splits"] = {"all": {"dataset": "brain"}, "3T": {"dataset": "brain", "field_strength": 3.0},
                          "OOD": {"dataset": "ood"}}
    # the image-to-image baselines train long enough (~40-60 steps, seconds at 32²) to beat the zero-filled input
    cfg["unet"].update(chans=4, num_pool_layers=2, epochs=30)
    cfg["varnet"].update(num_cascades=2, chans=4, pools=2, sens_chans=4, sens_pools=2, epochs=20)
    cfg["swinmr"].update(embed_dim=16, depths=[1], num_heads=[2], batch_size=4, epochs=15)
    cfg["score_mri"].update(batch_size=4, epochs=1, n_steps=3)
    cfg["cs"].update(iterations=20, val_slices=4)
    tiny_ldpm = {"vae": {"channels": 8, "norm_num_groups": 4},
                 "unet": {"block_out_channels": [16, 32], "cross_attention_dim": 16, "norm_num_groups": 4},
                 "natural": {"n_patches": 32}, "natural_vae": {"steps": 4}, "natural_unet": {"steps": 4},
                 "sketcher": {"epochs": 1}, "mrvae": {"epochs": 1}, "mrcn": {"epochs": 1}, "sampler": {"num_steps": 3}}
    for block, values in tiny_ldpm.items():
        cfg["ldpm"].setdefault(block, {}).update(values)
    cfg["ldpm"]["ablations_mode"] = "retrain"  # the paper config's mode (config.yaml swaps, for time)
    return cfg


def multicoil_config(cfg: dict) -> dict:
    """`cfg` on the image grid (raw matrix = crop = image size 32, centre fraction 0.1: 3 ACS lines for ESPIRiT)
    with both measurements (and a U-Net trained long enough to beat zero-filled under both)."""
    cfg["data"]["embedded"]["matrix"] = 32
    cfg["data"].update(crop_size=32, image_size=32)
    cfg["masks"]["center_fractions"] = {8: 0.1}
    cfg["masks"]["train"]["center_fractions"] = [0.1]
    cfg["unet"]["epochs"] = 150  # 12 training slices at 32²: 300 steps (~40 s) until the U-Net clears zero-filled
    return cfg | {"measurements": ["magnitude", "multicoil"]}


@pytest.fixture(scope="session")
def multicoil_run(tmp_path_factory) -> Path:
    """The whole Snakefile run once on multicoil_config(small_config()): every method under both measurements."""
    workdir = tmp_path_factory.mktemp("multicoil_run")
    (workdir / "config.yaml").write_text(yaml.safe_dump(multicoil_config(small_config()), sort_keys=False))
    result = snakemake(workdir, timeout=3600)  # 20 min on a 2-core box (2026-12-05)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A working directory where the whole Snakefile has run once on small_config(): the end-to-end smoke run,
    shared by the tests that read its outputs or ask Snakemake what a change would rerun."""
    workdir = tmp_path_factory.mktemp("run")
    (workdir / "config.yaml").write_text(yaml.safe_dump(small_config(), sort_keys=False))
    # ~8 min on an idle 2-core box (2026-11-30); 900 s ran out beside a pipeline run, and 2-core machines differ 3-4x
    result = snakemake(workdir, timeout=2700)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir
