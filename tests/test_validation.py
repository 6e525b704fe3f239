"""Per-epoch validation of every training stage: the curve CSV beside the weights, its survival across a resume, the
numbers being the metric of the saved weights, fixed noise for the loss-based stages, and the training-curve figure."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from fastmri import evaluate as fm

from ldpm.train import Trainer, curve_path

MASKS = {"accelerations": [8], "center_fractions": [0.04]}
UNET_HP = {"chans": 4, "num_pool_layers": 2, "drop_prob": 0.0, "lr": 1e-3, "batch_size": 4, "ckpt_every": 1}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second thread gains nothing and waits at every op on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def data(prepared) -> dict[str, str]:
    return {"train": str(prepared / "train.h5"), "val": str(prepared / "val.h5")}


def val_rows(curve: pd.DataFrame, name: str) -> pd.DataFrame:
    return curve[curve.name == name].reset_index(drop=True)


@pytest.fixture
def hooks(monkeypatch) -> list:
    """The `validate` hooks the stages hand to Trainer.run, kept so a test can call them again."""
    kept, run = [], Trainer.run

    def keep(self, step_fn, validate=None, curve=None):
        kept.append(validate)
        return run(self, step_fn, validate, curve)

    monkeypatch.setattr(Trainer, "run", keep)
    return kept


def assert_fixed(hook) -> None:
    """A hook's numbers do not depend on the global RNG: its noise (if any) is fixed per validation item."""
    with torch.no_grad():
        torch.manual_seed(1)
        first = hook()
        torch.manual_seed(2)
        assert hook() == first


def test_unet_writes_one_validation_row_per_epoch(prepared, tmp_path):
    from ldpm.baselines.unet import train_unet
    from ldpm.io import read_images

    out = tmp_path / "unet.safetensors"
    train_unet(data(prepared), out, tmp_path / "ck", UNET_HP | {"epochs": 3}, MASKS, 0, "cpu")
    curve = pd.read_csv(tmp_path / "unet.curve.csv")
    assert curve_path(out) == tmp_path / "unet.curve.csv"
    assert list(curve.columns) == ["step", "epoch", "name", "value"]
    steps_per_epoch = -(-len(read_images(prepared / "train.h5")) // UNET_HP["batch_size"])
    for name in ("train_l1", "val_psnr", "val_ssim"):
        rows = val_rows(curve, name)
        assert rows.epoch.tolist() == [1, 2, 3], name
        assert rows.step.tolist() == [steps_per_epoch * e for e in (1, 2, 3)], name
        assert np.isfinite(rows.value).all()
    assert set(curve.name) == {"train_l1", "val_psnr", "val_ssim"}
    assert 0 < val_rows(curve, "val_ssim").value.max() <= 1


def test_resume_keeps_the_validation_history(prepared, tmp_path):
    """Stopped after 2 epochs and rerun to 3 on the same checkpoint: epochs 1..3 once each, with the values of an
    uninterrupted run (the rows of epochs 1–2 come from the checkpoint, not recomputed or lost)."""
    from ldpm.baselines.unet import train_unet

    train_unet(data(prepared), tmp_path / "full.safetensors", tmp_path / "ck_full", UNET_HP | {"epochs": 3}, MASKS, 0,
               "cpu")
    train_unet(data(prepared), tmp_path / "part.safetensors", tmp_path / "ck", UNET_HP | {"epochs": 2}, MASKS, 0, "cpu")
    assert val_rows(pd.read_csv(tmp_path / "part.curve.csv"), "val_psnr").epoch.tolist() == [1, 2]
    train_unet(data(prepared), tmp_path / "resumed.safetensors", tmp_path / "ck", UNET_HP | {"epochs": 3}, MASKS, 0,
               "cpu")
    resumed, full = pd.read_csv(tmp_path / "resumed.curve.csv"), pd.read_csv(tmp_path / "full.curve.csv")
    for name in ("val_psnr", "val_ssim", "train_l1"):
        assert val_rows(resumed, name).epoch.tolist() == [1, 2, 3], name
    assert not resumed.duplicated(["epoch", "name"]).any()
    pd.testing.assert_frame_equal(resumed, full)


def test_a_checkpoint_without_validation_history_resumes_with_none(tmp_path):
    """Checkpoints written before validation existed: their history counts as empty, later epochs are added."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(i):
        loss = model(torch.ones(1, 2)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"mse": loss.item()}

    def validate():
        return {"out": float(model(torch.ones(1, 2)))}

    Trainer({"m": model}, {"o": opt}, tmp_path / "ck", total_steps=4, steps_per_epoch=2).run(step, validate)
    state = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert [v["epoch"] for v in state["validation"]] == [1, 2]
    del state["validation"]
    torch.save(state, tmp_path / "ck" / "last.pt")
    trainer = Trainer({"m": model}, {"o": opt}, tmp_path / "ck", total_steps=6, steps_per_epoch=2)
    trainer.run(step, validate, tmp_path / "m.curve.csv")
    curve = pd.read_csv(tmp_path / "m.curve.csv")
    assert val_rows(curve, "val_out").epoch.tolist() == [3]
    assert val_rows(curve, "train_mse").epoch.tolist() == [1, 2, 3]  # the loss history was in the checkpoint


def test_validation_runs_in_eval_mode_without_grad_and_leaves_training_untouched(tmp_path):
    """The hook sees eval mode and no autograd; training is back in train mode after it, and a hook that draws
    random numbers does not change what training draws (same losses, same weights as without validation)."""

    def run(with_validation: bool, ckpt: str):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        seen = []

        def step(i):
            seen.append(("step", model.training))
            loss = model(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return {"loss": loss.item()}

        def validate():
            seen.append(("val", model.training, torch.is_grad_enabled()))
            return {"draw": float(torch.rand(()))}  # consumes the global RNG

        trainer = Trainer({"m": model}, {"o": opt}, tmp_path / ckpt, total_steps=6, steps_per_epoch=2)
        history = trainer.run(step, validate if with_validation else None)
        return history, model.state_dict(), seen

    hist_v, weights_v, seen = run(True, "a")
    hist_n, weights_n, _ = run(False, "b")
    assert [s for s in seen if s[0] == "val"] == [("val", False, False)] * 3
    assert all(s[1] for s in seen if s[0] == "step")
    assert hist_v == hist_n
    for k in weights_n:
        torch.testing.assert_close(weights_v[k], weights_n[k], rtol=0, atol=0)


def test_unet_validation_numbers_are_the_psnr_ssim_of_the_saved_weights(prepared, tmp_path):
    """Recomputed from scratch: the saved weights on 3 evenly spaced val slices with masks seeded by
    stable_seed(seed, "val", row) from the first training (AF, cf); fastMRI PSNR / SSIM, data range = slice max."""
    from ldpm.baselines.unet import build_unet, train_unet, unet_reconstruct
    from ldpm.data.masks import sample_mask
    from ldpm.io import read_images, stable_seed
    from ldpm.physics import undersample
    from ldpm.weights import load_weights

    out = tmp_path / "unet.safetensors"
    train_unet(data(prepared), out, tmp_path / "ck", UNET_HP | {"epochs": 2}, MASKS, 7, "cpu", val_slices=3)
    images = read_images(prepared / "val.h5")
    assert len(images) > 3, "the selection of slices is tested only if there are more than 3"
    rows = np.unique(np.linspace(0, len(images) - 1, 3).round().astype(int))
    x = torch.from_numpy(images[rows])[:, None]
    mask = torch.stack([torch.from_numpy(sample_mask(x.shape[-1], 8, 0.04, stable_seed(7, "val", int(r)))).float()
                        for r in rows])[:, None, None, :]
    _, x_u = undersample(x, mask)
    model = load_weights(build_unet(UNET_HP), out).eval()
    with torch.no_grad():
        pred = unet_reconstruct(model, x_u)[:, 0].numpy().astype(np.float64)
    gt = x[:, 0].numpy().astype(np.float64)
    psnr = np.mean([fm.psnr(g, p, g.max()) for g, p in zip(gt, pred)])
    ssim = np.mean([fm.ssim(g[None], p[None], g.max()).item() for g, p in zip(gt, pred)])
    curve = pd.read_csv(curve_path(out))
    last = {n: val_rows(curve, n).value.iloc[-1] for n in ("val_psnr", "val_ssim")}
    assert last["val_psnr"] == pytest.approx(psnr, rel=1e-5)
    assert last["val_ssim"] == pytest.approx(ssim, rel=1e-4)
    first = val_rows(curve, "val_psnr").value.iloc[0]
    assert first != pytest.approx(psnr, rel=1e-5), "epoch 1 differs from the final weights: the comparison can fail"


def test_varnet_and_swinmr_log_psnr_and_ssim(prepared, tmp_path):
    from ldpm.baselines import swinmr, varnet

    hp_v = {"num_cascades": 1, "chans": 4, "pools": 2, "sens_chans": 4, "sens_pools": 2, "lr": 1e-3,
            "batch_size": 4, "epochs": 1, "ckpt_every": 100}
    hp_s = {"embed_dim": 16, "depths": [1], "num_heads": [2], "window_size": 8, "mlp_ratio": 2.0, "alpha": 15.0,
            "beta": 0.1, "gamma": 0.0025, "vgg_weights": None, "patch_size": 16, "augment": True, "lr": 1e-3,
            "lr_milestones": [], "lr_gamma": 0.5, "batch_size": 4, "epochs": 1, "ckpt_every": 100}
    varnet.train_varnet(data(prepared), tmp_path / "varnet.safetensors", tmp_path / "ck_v", hp_v, MASKS, 0, "cpu")
    swinmr.train_swinmr(data(prepared), tmp_path / "swinmr.safetensors", tmp_path / "ck_s", hp_s, MASKS, 0, "cpu")
    for name in ("varnet", "swinmr"):
        curve = pd.read_csv(tmp_path / f"{name}.curve.csv")
        assert {"val_psnr", "val_ssim"} <= set(curve.name), name
        assert np.isfinite(curve.value).all() and (curve.epoch == 1).all()
    assert {"train_image", "train_total"} <= set(pd.read_csv(tmp_path / "swinmr.curve.csv").name)


def test_score_mri_validation_uses_fixed_noise(prepared, tmp_path, hooks):
    """With lr 0 the (EMA) weights never change, so with fixed t and z every epoch scores the same loss; fresh noise
    would make the curve move by itself. The hook scores the same under any global RNG state."""
    from ldpm.baselines.score_mri import train_score_mri

    hp = {"model": "tiny", "sigma_min": 0.01, "sigma_max": 20.0, "lr": 0.0, "batch_size": 4, "epochs": 2,
          "ckpt_every": 100}
    train_score_mri(data(prepared), tmp_path / "score.safetensors", tmp_path / "ck", hp, MASKS, 0, "cpu")
    rows = val_rows(pd.read_csv(tmp_path / "score.curve.csv"), "val_dsm")
    assert rows.epoch.tolist() == [1, 2] and rows.value.iloc[0] > 0
    assert rows.value.iloc[0] == rows.value.iloc[1]
    assert_fixed(hooks[-1])


def tiny_ldpm_hp() -> dict:
    from ldpm.config import validate_config

    hp = copy.deepcopy(validate_config({})["ldpm"])
    hp["vae"].update(channels=8, norm_num_groups=4)
    hp["unet"].update(block_out_channels=[8, 16], cross_attention_dim=8, norm_num_groups=4)
    hp["natural"].update(images=["camera", "coffee"], patch_size=32, n_patches=16)
    hp["natural_vae"].update(steps=4, batch_size=8, ckpt_every=50)
    hp["natural_unet"].update(steps=2, batch_size=8)
    for stage in ("sketcher", "mrvae", "mrcn"):
        hp[stage].update(epochs=1, batch_size=8)
    hp["mrcn"].update(epochs=2, lr=0.0)  # weights fixed: the validation loss must repeat exactly
    return hp


def test_every_ldpm_stage_writes_its_validation_curve(prepared, tmp_path, hooks):
    """The natural-image stand-ins on held-out photo patches, SkM / MR-VAE / MRCN on the val split; the MRCN's loss
    uses fixed (c, z0, t, ε), so with frozen weights (lr 0) two epochs score exactly the same, and every stage's
    numbers are the same under any global RNG state."""
    from ldpm.stages import TRAINERS, resolve

    hp = tiny_ldpm_hp()
    names = ("natural_vae", "natural_unet", "sketcher", "mrvae", "mrcn")
    w = {n: str(tmp_path / f"ldpm_{n}.safetensors") for n in names}
    sub = lambda *keys: {k: hp[k] for k in keys}  # noqa: E731
    stages = [
        ("natural_vae", {}, sub("vae", "natural", "natural_vae"), {"val_l1", "val_psnr"}),
        ("natural_unet", {"natural_vae": w["natural_vae"]}, sub("vae", "unet", "natural", "natural_unet"),
         {"val_eps_mse"}),
        ("sketcher", data(prepared), sub("sketcher"), {"val_psnr", "val_ssim"}),
        ("mrvae", data(prepared) | {"natural_vae": w["natural_vae"]}, sub("sd_dir", "vgg_weights", "vae", "mrvae"),
         {"val_l1", "val_psnr"}),
        ("mrcn", data(prepared) | {k: w[k] for k in ("natural_unet", "mrvae", "sketcher")},
         sub("sd_dir", "vae", "unet", "sketcher", "mrcn"), {"val_eps_mse"}),
    ]
    for name, inputs, stage_hp, expected in stages:
        resolve(TRAINERS, f"ldpm_{name}", "model")(inputs, w[name], tmp_path / "ck" / name, stage_hp, MASKS, 0, "cpu",
                                                  val_slices=4)
        curve = pd.read_csv(tmp_path / f"ldpm_{name}.curve.csv")
        assert {n for n in curve.name if n.startswith("val_")} == expected, name
        assert np.isfinite(curve.value).all(), name
        assert_fixed(hooks[-1])
    mrcn = val_rows(pd.read_csv(tmp_path / "ldpm_mrcn.curve.csv"), "val_eps_mse")
    assert mrcn.epoch.tolist() == [1, 2] and mrcn.value.iloc[0] == mrcn.value.iloc[1] > 0


def test_training_curves_figure_and_cli(tmp_path):
    from PIL import Image

    from ldpm.cli import main
    from ldpm.evaluate.figures import training_curves

    rows = [(s, e, n, v) for e, s in ((1, 10), (2, 20), (3, 30))
            for n, v in (("train_l1", 1 / e), ("train_perceptual_on", 0.0), ("val_psnr", 20 + e), ("val_ssim", 0.5))]
    csv = tmp_path / "unet.curve.csv"
    pd.DataFrame(rows, columns=["step", "epoch", "name", "value"]).to_csv(csv, index=False)
    plotted = training_curves(csv, tmp_path / "a.png", "unet")
    assert plotted == {"train": ["l1"], "val": ["psnr", "ssim"]}  # the constant flag is a note, not a curve
    assert Image.open(tmp_path / "a.png").size[0] > 500
    assert main(["training-curves", "--curve", str(csv), "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "b.png").stat().st_size > 10_000
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"step": [1]}).to_csv(bad, index=False)
    assert main(["training-curves", "--curve", str(bad), "--out", str(tmp_path / "c.png")]) == 2
    assert not (tmp_path / "c.png").exists()


def test_cli_train_passes_val_slices_and_records_the_curve(prepared, tmp_path, caplog):
    """`ldpm train --val-slices N` reaches the stage, and the curve goes through atomic_output (so the stage's
    provenance record covers it) next to the weights."""
    from ldpm import io
    from ldpm.cli import main

    caplog.set_level(logging.INFO)
    out = tmp_path / "unet.safetensors"
    assert main(["train", "unet", "--inputs", json.dumps(data(prepared)), "--out", str(out), "--ckpt-dir",
                 str(tmp_path / "ck"), "--hp", json.dumps(UNET_HP | {"epochs": 1}), "--masks", json.dumps(MASKS),
                 "--device", "cpu", "--val-slices", "2"]) == 0
    assert "unet: validating on 2 of" in caplog.text
    assert curve_path(out) in io.WRITTEN and curve_path(out).exists()
