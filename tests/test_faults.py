"""Faults and determinism on the real Snakefile (slow: each runs the small pipeline; `pytest -m slow`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_pipeline import small_config, snakemake

pytestmark = pytest.mark.slow


def write_config(workdir: Path, cfg: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_two_clean_runs_give_byte_identical_tables(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        write_config(run, small_config())
        result = snakemake(run)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    tables = sorted(p.relative_to(runs[0]) for p in (runs[0] / "results" / "tables").iterdir())
    assert tables
    for rel in tables:
        assert (runs[0] / rel).read_bytes() == (runs[1] / rel).read_bytes(), rel


def test_kill_9_during_training_resumes_from_the_checkpoint(tmp_path):
    """The whole Snakemake process group dies (a node going down); after `--unlock` the rerun resumes the training
    job from its last checkpoint and does not redo the preprocessing that had finished."""
    cfg = small_config()
    cfg["unet"].update(epochs=200, ckpt_every=5)
    write_config(tmp_path, cfg)
    target = "results/models/unet.safetensors"
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                             "--cores", "2", target], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "results/checkpoints/unet/last.pt"
    deadline = time.time() + 600
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert ckpt.exists(), "training never wrote a checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / target).exists()
    train_h5 = tmp_path / "results/data/train.h5"
    before = train_h5.stat().st_mtime_ns

    assert snakemake(tmp_path, "--unlock").returncode == 0
    result = snakemake(tmp_path, target)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "resumed unet" in (tmp_path / "results/logs/train_unet.log").read_text()
    assert train_h5.stat().st_mtime_ns == before, "finished preprocessing was redone"
