"""Cluster profile: the workflow dry-runs under the SLURM executor plugin with GPUs on training and sampling."""

from __future__ import annotations

import re
import shutil

from conftest import REPO
from test_pipeline import snakemake


def test_slurm_profile_dry_run_puts_gpus_where_they_are_used(tmp_path):
    """Without --cores (the executor sizes jobs): GPUs on training, sampling and perceptual features, not on the
    CPU metrics or preprocessing; each training job's time limit is its model's."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    result = snakemake(tmp_path, "-n", "--workflow-profile", str(REPO / "profiles" / "slurm"), cores=None)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    jobs = {}  # rule -> resources line of its first job
    for block in out.split("rule ")[1:]:
        name = block.split(":", 1)[0]
        res = re.search(r"resources: (.*)", block)
        jobs.setdefault(name, res.group(1) if res else "")
    assert "gpu=1" in jobs["train"] and "gpu=1" in jobs["reconstruct"] and "gpu=1" in jobs["perceptual"]
    assert "gpu=1" not in jobs["metrics"] and "gpu=1" not in jobs["masks"] and "gpu=1" not in jobs["gather"]
    runtimes = {re.search(r"model=(\w+)", block).group(1): re.search(r"runtime=(\d+)", block).group(1)
                for block in out.split("rule ")[1:] if block.startswith("train:")}
    assert runtimes["score_mri"] == "4320" and runtimes["unet"] == "360", runtimes


def test_paper_config_validates_with_local_paths(tmp_path):
    """configs/paper.yaml is a valid config once its PATH entries point at existing directories."""
    import yaml

    from ldpm.config import validate_config

    cfg = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    for name, spec in cfg["data"]["datasets"].items():
        spec["paths"] = [str(tmp_path / name)]
        (tmp_path / name).mkdir()
    cfg = validate_config(cfg)
    assert cfg["data"]["image_size"] == 320 and cfg["score_mri"]["n_steps"] == 2000
    assert cfg["ldpm"]["mrvae"]["lam"] == 0.65 and cfg["ldpm"]["mrcn"]["batch_size"] == 16


def test_train_processes_launch_training_under_torchrun(tmp_path):
    """train_processes: 4 → every training job's command is `torchrun … --nproc_per_node 4 -m ldpm train …`."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    result = snakemake(tmp_path, "-n", "-p", "--config", "train_processes=4")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    train_cmds = [line.removeprefix("Shell command: ") for line in out.splitlines() if "--ckpt-dir" in line]
    launcher = "torchrun --standalone --nproc_per_node 4 -m ldpm train"
    assert train_cmds and all(re.match(rf"LDPM_CODE=[0-9a-f]{{12}} {launcher}", c) for c in train_cmds)
