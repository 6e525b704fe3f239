"""Cluster profile: the workflow dry-runs under the SLURM executor plugin with GPUs on training and sampling."""

from __future__ import annotations

import re
import shutil

from conftest import REPO
from test_pipeline import snakemake


def test_slurm_profile_dry_run_puts_gpus_on_training_and_sampling(tmp_path):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    result = snakemake(tmp_path, "-n", "--workflow-profile", str(REPO / "profiles" / "slurm"))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    jobs = {}  # rule -> resources line of its first job
    for block in out.split("rule ")[1:]:
        name = block.split(":", 1)[0]
        res = re.search(r"resources: (.*)", block)
        jobs.setdefault(name, res.group(1) if res else "")
    assert "gpu=1" in jobs["train"] and "gpu=1" in jobs["reconstruct"]
    assert "gpu=1" not in jobs["preprocess"] and "gpu=1" not in jobs["masks"]
