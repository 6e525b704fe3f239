"""Data-parallel training under torchrun (Gloo on CPU, the same code path NCCL takes on GPUs): N processes, each
on its slice of the global batch, take the same optimiser steps as one process on the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HP = {"chans": 4, "num_pool_layers": 2, "drop_prob": 0.0, "lr": 1e-3, "batch_size": 4, "epochs": 2, "ckpt_every": 2}
MASKS = {"accelerations": [8], "center_fractions": [0.04]}


def train(tmp_path: Path, model: str, inputs: dict, hp: dict, nproc: int, name: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "ldpm"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "ldpm"]
    cmd = [*launcher, "train", model, "--inputs", json.dumps(inputs), "--out", str(tmp_path / f"{name}.safetensors"),
           "--ckpt-dir", str(tmp_path / f"ck_{name}"), "--hp", json.dumps(hp), "--masks", json.dumps(MASKS),
           "--seed", "0", "--device", "cpu"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_two_processes_match_one_process_on_the_whole_batch(prepared, tmp_path):
    inputs = {"train": str(prepared / "train.h5")}
    one = train(tmp_path, "unet", inputs, HP, 1, "one")
    two = train(tmp_path, "unet", inputs, HP, 2, "two")
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert a.keys() == b.keys()
    for k in a:  # only the order of the float sums differs (all-reduce vs one batch mean)
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    untrained = train(tmp_path, "unet", inputs, HP | {"epochs": 1}, 1, "half")
    assert untrained.returncode == 0
    c = load_file(tmp_path / "half.safetensors")
    assert any(not torch.allclose(c[k], a[k], atol=1e-4) for k in a), "the comparison can fail"
    # rank 0 alone writes the weights' provenance record and the checkpoint
    # (outside any results/ tree the record goes to <output's directory>/provenance/records/, see ldpm.provenance)
    records = tmp_path / "provenance" / "records"
    assert (records / "two.safetensors.json").exists() and (tmp_path / "ck_two" / "last.pt").exists()
    assert not list(tmp_path.glob("*.prov.json"))


def test_a_batch_that_does_not_split_is_a_one_line_error(prepared, tmp_path):
    result = train(tmp_path, "unet", {"train": str(prepared / "train.h5")}, HP | {"batch_size": 3}, 2, "odd")
    assert result.returncode != 0
    assert "ldpm: error: batch_size 3 does not split over 2 training processes" in result.stderr
    assert not (tmp_path / "odd.safetensors").exists()


@pytest.mark.slow
def test_every_ddp_stage_runs_under_torchrun(prepared, tmp_path):
    """SkM, MR-VAE (GAN alternation + adaptive weight through DDP) and MRCN, each with two processes."""
    from test_ldpm_pipeline import sub, tiny_hp

    from ldpm.method.components import build_sketcher, load_vae, pretrained_unet
    from ldpm.models.mrcontrolnet import build_control_branch
    from ldpm.train import seed_everything

    hp, data = tiny_hp(), str(prepared / "train.h5")
    w = {n: str(tmp_path / f"{n}.safetensors") for n in ("ldpm_natural_vae", "ldpm_natural_unet")}
    for model, inputs, block in [("ldpm_natural_vae", {}, sub(hp, "vae", "natural", "natural_vae")),
                                 ("ldpm_natural_unet", {"natural_vae": w["ldpm_natural_vae"]},
                                  sub(hp, "vae", "unet", "natural", "natural_unet"))]:
        assert train(tmp_path, model, inputs, block, 1, model).returncode == 0
    # What each stage's file must hold: its module's state dict, every parameter moved off its start by the DDP
    # steps (DDP without find_unused_parameters: each one gets a gradient). Starts: SkM's SwinIR as seed 0 builds
    # it, the natural VAE that MR-VAE fine-tunes, the control branch built from the natural U-Net (zero convs).
    # Exception: the cross-attention query path (norm2, attn2.to_q) gets a zero gradient from the one-token zero
    # prompt (softmax over one key is 1), so its zero biases stay zero (nonzero weights still move by AdamW decay).
    seed_everything(0)
    start = {"sketcher": build_sketcher(hp), "mrvae": load_vae(w["ldpm_natural_vae"], hp),
             "mrcn": build_control_branch(pretrained_unet({"natural_unet": w["ldpm_natural_unet"]}, hp)[0])}
    stages = [("ldpm_sketcher", {"train": data}, "sketcher"),
              ("ldpm_mrvae", {"train": data, "natural_vae": w["ldpm_natural_vae"]}, "mrvae"),
              ("ldpm_mrcn", {"train": data, "natural_vae": w["ldpm_natural_vae"],
                             "natural_unet": w["ldpm_natural_unet"], "mrvae": str(tmp_path / "mrvae.safetensors"),
                             "sketcher": str(tmp_path / "sketcher.safetensors")}, "mrcn")]
    for model, inputs, name in stages:
        result = train(tmp_path, model, inputs, hp, 2, name)
        assert result.returncode == 0, result.stderr[-3000:]
        weights, initial = load_file(tmp_path / f"{name}.safetensors"), start[name].state_dict()
        assert weights.keys() == initial.keys(), name
        for k, v in weights.items():
            assert v.shape == initial[k].shape and torch.isfinite(v).all(), f"{name}: {k}"
        unchanged = [k for k, _ in start[name].named_parameters() if torch.equal(weights[k], initial[k])
                     and not (".transformer_blocks." in k and (".norm2." in k or ".attn2.to_q." in k))]
        assert not unchanged, f"{name}: parameters not trained: {unchanged[:5]}"
