"""Faults and determinism on the real Snakefile (slow: each runs the small pipeline; `pytest -m slow`)."""

from __future__ import annotations

import os
import shutil
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
    """Every table and statistic, byte for byte, from two runs from clean in the same directory (the md footnotes
    name the directories searched for backbone weights). Not compared: compute_af* (measured seconds and memory)
    and the provenance records in results/provenance/records (wall times, dates)."""
    run, first = tmp_path / "run", tmp_path / "first"
    write_config(run, small_config())
    tables = []
    for attempt in range(2):
        result = snakemake(run)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        tables = sorted(p.name for p in (run / "results" / "tables").iterdir()
                        if p.suffix in (".csv", ".md", ".tex") and not p.name.startswith("compute_"))
        if attempt == 0:
            shutil.copytree(run / "results" / "tables", first)
            shutil.rmtree(run / "results")
            shutil.rmtree(run / ".snakemake")
    assert len(tables) >= 9
    for name in tables:
        assert (first / name).read_bytes() == (run / "results" / "tables" / name).read_bytes(), name


def kill_9_and_rerun(workdir: Path, cfg: dict, target: str, started: Path, finished_before: Path) -> None:
    """Run Snakemake for `target` in its own process group and kill -9 the whole group (a node going down) once
    `started` exists; `--unlock`, as the README tells a user to; rerun. `finished_before`, done before the kill,
    must not be redone."""
    write_config(workdir, cfg)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                             "--cores", "2", target], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert started.exists(), f"{started} never appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (workdir / target).exists()
    assert snakemake(workdir, "--unlock").returncode == 0
    before = finished_before.stat().st_mtime_ns
    result = snakemake(workdir, target)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert finished_before.stat().st_mtime_ns == before, f"{finished_before} was redone"


def test_kill_9_during_training_resumes_from_the_checkpoint(tmp_path):
    """After the kill the rerun resumes the training job from its last checkpoint and does not redo the
    preprocessing that had finished."""
    cfg = small_config()
    cfg["unet"].update(epochs=200, ckpt_every=5)
    kill_9_and_rerun(tmp_path, cfg, "results/models/seed0/unet.safetensors",
                     tmp_path / "results/checkpoints/seed0/unet/last.pt",
                     finished_before=tmp_path / "results/data/train.h5")
    assert "resumed unet" in (tmp_path / "results/logs/train_unet_seed0.log").read_text()


def test_kill_9_during_sampling_reruns_only_the_sampling(tmp_path):
    """Killed mid-sampling: no reconstruction is left that Snakemake would take as complete; the rerun samples again
    with the finished model (not retrained) and gives the same file as an uninterrupted run."""
    import h5py

    cfg = small_config()
    cfg["score_mri"]["n_steps"] = 400  # long enough to be caught mid-sampling
    target = "results/recon/score_mri/seed0/magnitude_random_af8.h5"
    kill_9_and_rerun(tmp_path, cfg, target, tmp_path / "results/logs/reconstruct_score_mri_seed0_magnitude_random_af8.log",
                     finished_before=tmp_path / "results/models/seed0/score_mri.safetensors")
    assert not list((tmp_path / "results/recon/score_mri/seed0").glob(".*.partial")), "a partial file was left behind"
    with h5py.File(tmp_path / target) as fh:
        rerun = fh["recon"][()]
    (tmp_path / target).unlink()
    assert snakemake(tmp_path, target).returncode == 0
    with h5py.File(tmp_path / target) as fh:
        assert (fh["recon"][()] == rerun).all(), "sampling is seeded: the same reconstruction every time"
