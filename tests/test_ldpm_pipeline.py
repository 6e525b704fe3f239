"""LDPM as pipeline stages: every training stage runs a few steps and writes loadable weights, the LDPM
reconstructor and its ablations run on a batch, Table II / Fig 3 are built, and paper-scale paths fail clearly."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO
from safetensors.torch import load_file

from ldpm.physics import Measurement
from ldpm import LdpmError
from ldpm.config import validate_config
from ldpm.evaluate.ablations import ABLATION_LABELS, figure3, table2
from ldpm.method import check_sd_dir, components, training
from ldpm.method.reconstruct import ldpm, ldpm_no_dss, ldpm_no_mrvae, ldpm_no_skm
from ldpm.models.latent import sd_noise_scheduler
from ldpm.physics import undersample
from ldpm.stages import RECONSTRUCTORS, TRAINERS, resolve

MASKS = {"accelerations": [8], "center_fractions": [0.04]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second thread gains nothing, and on a busy machine two OpenMP threads wait for each
    other at every op (measured: a 32² decode 2 ms with one thread, 0.4 s with two under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_hp() -> dict:
    """The schema's `ldpm` defaults, shrunk to seconds on 32² images."""
    hp = copy.deepcopy(validate_config({})["ldpm"])
    hp["vae"].update(channels=8, norm_num_groups=4)
    hp["unet"].update(block_out_channels=[8, 16], cross_attention_dim=8, norm_num_groups=4)
    hp["natural"].update(images=["camera", "coffee"], patch_size=32)
    # enough pretraining for a denoiser that denoises (the MRCN tests need one), still seconds at 32²
    hp["natural"].update(n_patches=64)
    hp["natural_vae"].update(steps=150, batch_size=8, ckpt_every=50)
    hp["natural_unet"].update(steps=300, batch_size=16)
    for stage in ("sketcher", "mrvae", "mrcn"):
        hp[stage].update(epochs=1, batch_size=8)
    hp["mrvae"]["disc_start"] = 1  # step 0 without, the following steps with the GAN term
    hp["sampler"].update(num_steps=3, p=500)  # one DC step, two guidance steps
    return hp


def measure(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask, k_u, x_u) for 32² test images: every 4th column plus the 4 centre ones."""
    mask = torch.zeros(len(x), 1, 1, 32)
    mask[..., ::4] = 1
    mask[..., 14:18] = 1
    return (mask, *undersample(x, mask))


def sub(hp: dict, *keys: str) -> dict:
    return {k: hp[k] for k in keys}


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """All five stages in dependency order, with the registry's entries (as `ldpm train` calls them)."""
    out = tmp_path_factory.mktemp("ldpm_models")
    hp, train = tiny_hp(), {"train": str(prepared / "train.h5")}
    names = ("natural_vae", "natural_unet", "sketcher", "mrvae", "mrcn")
    w = {name: str(out / f"{name}.safetensors") for name in names}
    stages = [
        ("natural_vae", {}, sub(hp, "vae", "natural", "natural_vae")),
        ("natural_unet", {"natural_vae": w["natural_vae"]}, sub(hp, "vae", "unet", "natural", "natural_unet")),
        ("sketcher", train, sub(hp, "sketcher")),
        ("mrvae", train | {"natural_vae": w["natural_vae"]}, sub(hp, "sd_dir", "vgg_weights", "vae", "mrvae")),
        ("mrcn", train | {k: w[k] for k in ("natural_unet", "mrvae", "sketcher")},
         sub(hp, "sd_dir", "vae", "unet", "sketcher", "mrcn")),
    ]
    histories = {}
    for name, inputs, stage_hp in stages:
        trainer = resolve(TRAINERS, f"ldpm_{name}", "model")
        histories[name] = trainer(inputs, w[name], out / "ckpt" / name, stage_hp, MASKS, 0, "cpu")
    return {"hp": hp, "weights": w, "histories": histories, "dir": out}


def test_every_stage_writes_loadable_weights(trained):
    hp, w, hist = trained["hp"], trained["weights"], trained["histories"]
    assert all(len(h) >= 1 and all(np.isfinite(v) for rec in h for v in rec.values()) for h in hist.values())
    nat = components.load_vae(w["natural_vae"], hp)
    mr = components.load_vae(w["mrvae"], hp)
    assert nat.config.scaling_factor != 1.0  # measured on its photo patches (1/std of the latents)
    assert any(not torch.equal(a, b) for a, b in zip(nat.state_dict().values(), mr.state_dict().values()))
    # no VGG file configured: perceptual term off, and the weights say so
    assert components.weights_metadata(w["mrvae"])["perceptual"].startswith("off")
    assert "d_hinge" in hist["mrvae"][-1] and "d_hinge" not in hist["mrvae"][0]
    # MRCN saves the control branch only; it loads onto the pretrained U-Net
    keys = load_file(w["mrcn"]).keys()
    assert any(k.startswith("controlnet_down_blocks") for k in keys)
    assert not any(k.startswith("up_blocks") for k in keys)
    model, prompt = components.load_mrcn(w, hp)
    assert model.control.conv_in.weight.shape[1] == 8 and prompt.shape == (1, 1, hp["unet"]["cross_attention_dim"])
    sketcher_net = components.load_sketcher(w["sketcher"], hp)
    saved = load_file(w["sketcher"])
    assert set(saved) == set(sketcher_net.state_dict())
    for k, v in sketcher_net.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    assert not any(p.requires_grad for p in sketcher_net.parameters()) and not sketcher_net.training


@pytest.mark.parametrize("scaling", ["sd", "measured"])
def test_mrvae_latent_scale_is_the_configured_one(trained, prepared, tmp_path, scaling):
    """ldpm.mrvae.scaling: "sd" keeps the pretrained VAE's factor (the frozen U-Net's scale, as DiffBIR keeps SD's
    0.18215); "measured" sets 1/std of the fine-tuned latents on the training set, which must then have unit std
    (recomputed here from the images, independently of training)."""
    from ldpm.io import read_images
    from ldpm.models.latent import encode

    hp, w = trained["hp"], trained["weights"]
    path = w["mrvae"]
    if scaling != hp["mrvae"]["scaling"]:  # the fixture trained the default; one more epoch-1 MR-VAE for the other
        mrvae_hp = sub(hp, "sd_dir", "vgg_weights", "vae", "mrvae")
        mrvae_hp["mrvae"] = mrvae_hp["mrvae"] | {"scaling": scaling}
        path = str(tmp_path / "mrvae.safetensors")
        resolve(TRAINERS, "ldpm_mrvae", "model")({"train": str(prepared / "train.h5"),
                                                  "natural_vae": w["natural_vae"]}, path, tmp_path / "ckpt",
                                                 mrvae_hp, MASKS, 0, "cpu")
    mr = components.load_vae(path, hp)
    natural = components.load_vae(w["natural_vae"], hp)
    x = torch.from_numpy(read_images(prepared / "train.h5"))[:, None]
    with torch.no_grad():
        std = float(encode(mr, x).std())
    meta = components.weights_metadata(path)
    assert meta["scaling"] == scaling and int(meta["scaling_images"]) == len(x)
    if scaling == "sd":
        assert mr.config.scaling_factor == natural.config.scaling_factor
        # the factor the "measured" setting would have set, logged and kept in the metadata: unit std with it
        assert abs(std * float(meta["measured_scaling_factor"]) / mr.config.scaling_factor - 1) < 0.1, std
    else:
        assert mr.config.scaling_factor != natural.config.scaling_factor
        assert abs(std - 1) < 0.1, std
        assert float(meta["measured_scaling_factor"]) == mr.config.scaling_factor


def test_configured_guidance_changes_the_kspace_residual(trained, prepared):
    """The guidance stage must act in DiffBIR's convention: at the schema's g = 0.1 the k-space residual δ (eq. 10)
    of LDPM's output moves by more than 1 % against the same run with the guidance stage off (same noise; the
    literal g = 0.1 on a mean loss left δ unchanged to ~1e-4), and at the embedded grid's small g = 0.02 it falls.
    (DiffBIR's 3000 was set for a mean over a 512² image: on the 32² images here g = 0.1 overshoots, δ rises.)"""
    from ldpm.io import read_images
    from ldpm.sampling.dual_stage import kspace_loss

    hp = sub(trained["hp"], "sd_dir", "vae", "unet", "sketcher", "sampler")
    assert hp["sampler"]["guidance_scale"] == validate_config({})["ldpm"]["sampler"]["guidance_scale"] == 0.1
    x = torch.from_numpy(read_images(prepared / "test.h5"))[:4, None]
    mask, k_u, x_u = measure(x)

    def delta(g, guided):
        torch.manual_seed(0)
        run = ldpm(trained["weights"], hp | {"sampler": hp["sampler"] | {"guidance_scale": g}}, torch.device("cpu"))
        return kspace_loss(run(Measurement(k_u, mask, x_u), use_guidance=guided), Measurement(k_u, mask)).mean().item()

    unguided = delta(0.1, False)
    assert abs(delta(0.1, True) / unguided - 1) > 0.01, unguided
    assert delta(0.02, True) < 0.99 * unguided, unguided


@pytest.fixture(scope="module")
def mrcn_trained_longer(trained, prepared):
    """The MRCN of `trained`, trained for 40 epochs instead of 1 (seconds at 32²), so it has learned to read its
    condition; the other stages are the fixture's."""
    hp = copy.deepcopy(trained["hp"])
    hp["mrcn"].update(epochs=40, batch_size=4, noise_draws=4)
    w = dict(trained["weights"]) | {"mrcn": str(trained["dir"] / "mrcn_long.safetensors")}
    inputs = {"train": str(prepared / "train.h5")} | {k: w[k] for k in ("natural_unet", "mrvae", "sketcher")}
    training.train_mrcn(inputs, w["mrcn"], trained["dir"] / "ckpt" / "mrcn_long",
                        sub(hp, "sd_dir", "vae", "unet", "sketcher", "mrcn"), MASKS, 0, "cpu")
    return w


def test_the_condition_matters_to_a_trained_mrcn(trained, mrcn_trained_longer, prepared):
    """On test images, the trained MRCN predicts the noise (eq. 7) better with the real condition than with the
    condition zeroed or taken from another image, at the noise levels where the sampler's output is decided.
    Measured at fixed (t, ε) in latent space, so that the tiny fixture decoder's error does not hide the effect;
    the pipeline's ldpm_diagnostics table shows the image-level counterpart (LDPM with the condition zeroed)."""
    from ldpm.io import read_images
    from ldpm.models.latent import encode
    from ldpm.models.swinir import sketcher

    hp = trained["hp"]
    w = {k: Path(v) for k, v in mrcn_trained_longer.items()}
    model, prompt = components.load_mrcn(w, hp)
    vae = components.load_vae(w["mrvae"], hp)
    net = components.load_sketcher(w["sketcher"], hp)
    x = torch.from_numpy(read_images(prepared / "test.h5"))[:8, None]
    mask, k_u, x_u = measure(x)
    scheduler = sd_noise_scheduler()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z0 = encode(vae, x)
        c_latent = encode(vae, sketcher(Measurement(k_u, mask, x_u), lambda im: components.repair(net, im)))
        conditions = {"real": c_latent, "zero": torch.zeros_like(c_latent), "shuffle": c_latent.roll(1, 0)}
        error = dict.fromkeys(conditions, 0.0)
        for t in (100, 300, 500):
            tt = torch.full((len(x),), t)
            noise = torch.randn(z0.shape, generator=g)
            z_t = scheduler.add_noise(z0, noise, tt)
            for name, c in conditions.items():
                error[name] += F.mse_loss(model(z_t, tt, c, prompt), noise).item()
    # measured: real 0.891, zero 0.967, shuffled 0.899; the MRCN of 1 epoch gives the same value to 1e-3 for all
    assert error["real"] < 0.97 * error["zero"] and error["real"] < error["shuffle"], error


def test_without_skm_the_result_changes(trained, mrcn_trained_longer, prepared):
    """w/o SkM feeds the MRCN |DC(x_u)| instead of the sketch: with an MRCN that reads its condition, the output
    changes (the 1-epoch fixture MRCN barely reads it: 1e-5)."""
    from ldpm.io import read_images

    hp = sub(trained["hp"], "sd_dir", "vae", "unet", "sketcher", "sampler")
    x = torch.from_numpy(read_images(prepared / "test.h5"))[:4, None]
    mask, k_u, x_u = measure(x)
    outputs = {}
    for factory in (ldpm, ldpm_no_skm):
        torch.manual_seed(0)
        with torch.no_grad():
            outputs[factory] = factory(mrcn_trained_longer, hp, torch.device("cpu"))(Measurement(k_u, mask, x_u))
    assert (outputs[ldpm] - outputs[ldpm_no_skm]).abs().max() > 1e-3


def test_mrcn_trains_only_the_control_branch(trained):
    hp, w = trained["hp"], trained["weights"]
    model, _ = components.load_mrcn(w, hp)
    natural_unet = load_file(w["natural_unet"])
    for k, v in model.unet.state_dict().items():  # the frozen denoiser is still the natural-image one
        torch.testing.assert_close(v, natural_unet[k], rtol=0, atol=0)
    # training moved the zero-initialised parts away from zero (the control signal is live)
    assert torch.count_nonzero(model.control.conv_in.weight[:, 4:]) > 0


def test_ldpm_and_ablations_reconstruct_a_batch_reproducibly(trained, prepared):
    from ldpm.io import read_images

    hp = sub(trained["hp"], "sd_dir", "vae", "unet", "sketcher", "sampler")
    x = torch.from_numpy(read_images(prepared / "test.h5"))[:4, None]
    mask, k_u, x_u = measure(x)
    outputs = {}
    for name, factory in [("ldpm", ldpm), ("ldpm_no_mrvae", ldpm_no_mrvae), ("ldpm_no_skm", ldpm_no_skm),
                          ("ldpm_no_dss", ldpm_no_dss)]:
        assert resolve(RECONSTRUCTORS, name, "method") is factory
        torch.manual_seed(0)  # as `ldpm.reconstruct` does before building a method
        with torch.no_grad():
            out = factory(trained["weights"], hp, torch.device("cpu"))(Measurement(k_u, mask, x_u))
        assert out.shape == (4, 1, 32, 32) and torch.isfinite(out).all()  # raw output: ldpm.reconstruct clips
        outputs[name] = out
    torch.manual_seed(0)
    with torch.no_grad():
        again = ldpm(trained["weights"], hp, torch.device("cpu"))(Measurement(k_u, mask, x_u))
    torch.testing.assert_close(again, outputs["ldpm"], rtol=0, atol=0)
    # another VAE / another sampler changes the result (w/o SkM: next test, with an MRCN that reads its condition)
    for name in ("ldpm_no_mrvae", "ldpm_no_dss"):
        assert (outputs[name] - outputs["ldpm"]).abs().max() > 1e-3, name


def test_diagnostics_sketch_each_slice_once_and_sample_as_ldpm_does(trained, prepared, monkeypatch):
    """The diagnostics' two LDPM rows reuse the sketch row's c (one SwinIR pass per slice, not three: at 320² the
    paper SwinIR costs more than a 2-step LDPM sample) and one copy of the networks (the paper MRCN is ~5 GB in
    float32), and still equal LDPM's own runs with those settings."""
    from ldpm.io import read_images
    from ldpm.method import diagnostics, reconstruct
    from ldpm.method.reconstruct import build_ldpm

    hp = sub(trained["hp"], "sd_dir", "vae", "unet", "sketcher", "sampler")
    gt = read_images(prepared / "test.h5")[:2]
    mask, k_u, x_u = measure(torch.from_numpy(gt)[:, None])
    calls = []

    def counted(*args):
        calls.append(len(args[0]))
        return sketcher(*args)

    from ldpm.models.swinir import sketcher
    monkeypatch.setattr(diagnostics, "sketcher", counted)
    monkeypatch.setattr(reconstruct, "sketcher", counted)
    loads, load_mrcn = [], reconstruct.load_mrcn
    monkeypatch.setattr(reconstruct, "load_mrcn", lambda *a: loads.append(1) or load_mrcn(*a))
    rows = diagnostics.diagnostic_images(gt, mask, trained["weights"], hp, seed=5, device="cpu")
    assert calls == [2] and len(loads) == 1
    monkeypatch.undo()
    for row, kwargs in (("ldpm_zero_condition", {"condition": "zero"}), ("ldpm_unguided", {"use_guidance": False})):
        torch.manual_seed(5)
        with torch.no_grad():
            alone = build_ldpm(trained["weights"], hp, torch.device("cpu"))(Measurement(k_u, mask, x_u), **kwargs)
        # as the reconstruct stage leaves LDPM's output: negatives set to 0
        np.testing.assert_array_equal(rows[row], alone[:, 0].clamp_min(0).numpy(), err_msg=row)


def test_natural_patches_are_deterministic_grey_photos():
    a = components.natural_patches(["camera", "astronaut"], 6, 16, seed=3)
    b = components.natural_patches(["camera", "astronaut"], 6, 16, seed=3)
    assert a.shape == (6, 1, 16, 16) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1 and a.std() > 0.05
    with pytest.raises(LdpmError, match="ldpm.natural.images: 'nope'"):
        components.natural_patches(["nope"], 1, 16, seed=0)


def test_missing_sd_dir_is_a_one_line_error_naming_the_key(tmp_path, prepared):
    missing = tmp_path / "sd-2-1-base"
    with pytest.raises(LdpmError, match=r"config key ldpm\.sd_dir: .*sd-2-1-base is not a directory") as err:
        check_sd_dir(str(missing))
    assert "\n" not in str(err.value)
    hp = tiny_hp() | {"sd_dir": str(missing)}
    with pytest.raises(LdpmError, match=r"config key ldpm\.sd_dir"):
        training.train_mrvae({"train": str(prepared / "train.h5")}, tmp_path / "m.safetensors", tmp_path / "ck",
                             sub(hp, "sd_dir", "vgg_weights", "vae", "mrvae"), MASKS, 0, "cpu")
    # an SD folder without weights: the loader names the missing file
    (missing / "vae").mkdir(parents=True)
    with pytest.raises(LdpmError, match="vae/config.json"):
        components.pretrained_vae({}, {"sd_dir": str(missing)})


def test_missing_weights_file_is_named(trained, tmp_path):
    with pytest.raises(LdpmError, match="nothing.safetensors: weights file not found"):
        components.load_vae(tmp_path / "nothing.safetensors", trained["hp"])


def test_vgg_weights_path_is_checked(prepared, tmp_path):
    hp = tiny_hp() | {"vgg_weights": str(tmp_path / "vgg16.pth")}
    with pytest.raises(LdpmError, match="vgg16.pth"):
        training.train_mrvae({"train": str(prepared / "train.h5"), "natural_vae": "unused"}, tmp_path / "m.safetensors",
                             tmp_path / "ck", sub(hp, "sd_dir", "vgg_weights", "vae", "mrvae"), MASKS, 0, "cpu")


def test_table2_from_metric_csvs(tmp_path):
    rows = []
    for i, method in enumerate(["ldpm", "ldpm_no_dss", "ldpm_no_skm", "ldpm_no_mrvae", "unet"]):
        for v, dataset in enumerate(["brain", "brain", "ood"]):
            rows.append({"volume": f"v{v}", "dataset": dataset, "method": method, "acceleration": 8,
                         "psnr": 20.0 + i + v, "ssim": 0.5 + 0.01 * i, "nmse": 0.1})
    order = ["ldpm_no_mrvae", "ldpm_no_skm", "ldpm_no_dss", "ldpm"]
    table = table2(pd.DataFrame(rows), order, {"dataset": "brain"}, "all", 8, tmp_path / "table2_af8")
    assert list(table.index) == [ABLATION_LABELS[m] for m in order]
    assert table.loc["LDPM (Ours)", "PSNR"] == pytest.approx(20.5) and table.loc["LDPM (w/o MR-VAE)", "PSNR"] == 23.5
    assert (table.volumes == 2).all()
    assert "LDPM (w/o SkM)" in (tmp_path / "table2_af8.md").read_text()
    assert (tmp_path / "table2_af8.tex").exists()
    assert list(pd.read_csv(tmp_path / "table2_af8.csv", index_col=0).columns) == ["PSNR", "SSIM", "volumes"]


def test_figure3_writes_metrics_for_both_vaes(trained, prepared, tmp_path):
    hp = sub(trained["hp"], "sd_dir", "vae")
    w = {k: trained["weights"][k] for k in ("natural_vae", "mrvae")}
    metrics = figure3(prepared / "test.h5", prepared / "test.csv", w, hp, tmp_path / "fig3.png",
                      tmp_path / "fig3.csv", split_filter={"dataset": "brain"}, split_name="all")
    assert list(metrics.vae) == ["natural-image VAE", "MR-VAE"] and metrics[["psnr", "ssim"]].notna().all().all()
    assert (tmp_path / "fig3.png").stat().st_size > 10_000
    assert pd.read_csv(tmp_path / "fig3.csv").shape == (2, 5)


def test_snakefile_rejects_a_missing_sd_dir_before_any_job(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["ldpm"]["sd_dir"] = str(tmp_path / "no-sd")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                             "--cores", "1", "-n"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "ldpm: error: config key ldpm.sd_dir:" in result.stderr and "no-sd is not a directory" in result.stderr
    assert not (tmp_path / "results").exists()


def test_adaptive_gan_weight_matches_the_gradient_sizes():
    from ldpm.losses import adaptive_gan_weight

    w = torch.randn(3, 3, requires_grad=True)
    x = torch.randn(5, 3)
    rec, gan = (x @ w).abs().mean(), -(x @ w).pow(2).mean() * 7
    weight = adaptive_gan_weight(rec, gan, w)
    (g_rec,) = torch.autograd.grad(rec, w, retain_graph=True)
    (g_gan,) = torch.autograd.grad(weight * gan, w)
    torch.testing.assert_close(g_gan.norm(), g_rec.norm(), rtol=1e-3, atol=0)
    assert not weight.requires_grad
