"""Protocols every method shares, tested on what the stages do: one output clipping (`clip_output`, applied by
`ldpm.reconstruct`), the scale of the measurement (config data.normalise), one PSNR (`ldpm.evaluate.protocol`),
and subject-level statistics with their Holm families."""

from __future__ import annotations

from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldpm import reconstruct as recon_stage
from ldpm.data.masks import load_test_masks, make_test_masks
from ldpm.evaluate import protocol
from ldpm.io import read_recon, write_images
from ldpm.physics import undersample

SIZE = 32


def write_test_set(folder, scale: float = 1.0, name: str = "test", n_subjects: int = 3, n_slices: int = 2):
    """{name}.h5 / .csv (one volume per subject, each divided by its maximum, then × scale), masks.npz (AF 4)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    rows, volumes = [], []
    for s in range(n_subjects):
        volume = np.stack([np.exp(-((yy - 0.5) ** 2 + (xx - 0.4 - 0.05 * k) ** 2) / 0.05) * (0.6 + 0.4 * rng.random())
                           + 0.05 * rng.random((SIZE, SIZE)) for k in range(n_slices)])
        volumes.append(volume / volume.max())
        rows += [{"slice_id": f"v{s}:{k:03d}", "volume": f"v{s}", "slice": k, "dataset": "brain",
                  "acquisition": "AXT1", "field_strength": 3.0, "system_model": "Skyra", "patient_id": f"p{s}"}
                 for k in range(n_slices)]
    gt = (np.concatenate(volumes) * scale).astype(np.float32)
    meta = pd.DataFrame(rows)
    write_images(folder / f"{name}.h5", gt)
    meta.to_csv(folder / f"{name}.csv", index=False)
    make_test_masks(meta.slice_id.tolist(), SIZE, 4, 0.08, seed=0, out=folder / "masks.npz", mask_type="equispaced")
    return gt, meta


# -------------------------------------------------------------------- stand-ins for trained networks that overshoot
def signs(like: torch.Tensor) -> torch.Tensor:
    """A fixed field of random ±1 over the image plane of `like`."""
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 2, tuple(like.shape[-2:]), generator=g) * 2 - 1).to(like.dtype).to(like.device)


class Net(nn.Module):
    """A "trained network" whose forward is `fn`: used in place of the weights a reconstructor loads."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


class OvershootVAE(nn.Module):
    """A VAE whose decoder output leaves [0, 1] on both sides: a ±6 field on top of the upsampled latent, squashed to
    (-1, 1) so that no sampler setting can push the whole image to one side."""

    config = SimpleNamespace(scaling_factor=1.0)

    def encode(self, x3):
        latent = F.avg_pool2d(x3[:, :1], 4).repeat(1, 4, 1, 1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: latent))

    def decode(self, z):
        image = torch.tanh(F.interpolate(z[:, :1], scale_factor=4)) + 6 * signs(z.new_zeros(1, 1, SIZE, SIZE))
        return SimpleNamespace(sample=image.expand(-1, 3, -1, -1))


def fake_ldpm_models(*args, **kwargs):
    from ldpm.method.reconstruct import LdpmModels

    return LdpmModels(mrcn=lambda z, t, c, prompt: torch.zeros_like(z), prompt=torch.zeros(1, 1, 8),
                      vae=OvershootVAE(), net=lambda x: 2 * x)


def ldpm_hp(**extra) -> dict:
    from ldpm.config import validate_config

    return {"sampler": validate_config({})["ldpm"]["sampler"] | {"num_steps": 3, "p": 500},
            "posterior_samples": 2} | extra


def patch_networks(monkeypatch):
    """Every reconstructor's loaded networks replaced by overshooting stand-ins; the method code around them (input
    standardisation, samplers, DC, decoding, averaging) runs as it does in the pipeline."""
    from ldpm.baselines import score_mri, swinmr, unet, varnet
    from ldpm.method import reconstruct as ldpm_recon

    monkeypatch.setattr(unet, "load_weights", lambda model, path: Net(lambda z: 20 * signs(z) + 0 * z))
    monkeypatch.setattr(varnet, "load_weights",
                        lambda model, path: Net(lambda k, m, n: 5 * signs(k[..., 0])[None] + 0.5 + 0 * k[:, 0, ..., 0]))
    monkeypatch.setattr(swinmr, "load_weights", lambda model, path: Net(lambda x: x + 5 * signs(x)))
    score = Net(lambda x, sigma: SimpleNamespace(sample=50 * signs(x) + 0 * x))
    monkeypatch.setattr(score_mri, "load_score_model", lambda path: (score, {"sigma_min": "0.01", "sigma_max": "20",
                                                                            "model": "tiny"}))
    monkeypatch.setattr(ldpm_recon, "load_ldpm_models", fake_ldpm_models)


BASELINE_HP = {"zero_filled": {}, "unet": {"chans": 4, "num_pool_layers": 2},
               "varnet": {"num_cascades": 1, "chans": 4, "pools": 2, "sens_chans": 4, "sens_pools": 2},
               "swinmr": {"embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 8, "mlp_ratio": 2.0},
               "score_mri": {"n_steps": 2, "snr": 0.16}}
# the CS rows: no network to overshoot; a few solver iterations on the measurement, λ from a tuning file
CS_HP = {"backend": "sigpy", "iterations": 5}
# a magnitude by construction (|x_u|, |DC(·)|, |x̂| of CS): nothing negative for the policy to remove
MAGNITUDE_OUTPUTS = {"zero_filled", "ldpm_final_dc", "cs_tv", "cs_wavelet"}


def test_every_registered_method_is_clipped_by_the_one_policy_only(tmp_path, monkeypatch):
    """Each method of `ldpm.stages.RECONSTRUCTORS`, its networks overshooting [0, 1] on both sides, run through the
    reconstruct stage: what reaches `clip_output` still overshoots (no method clips on its own), and the saved
    reconstruction is that output with only its negatives set to 0 (no upper clip)."""
    from ldpm.stages import RECONSTRUCTORS

    write_test_set(tmp_path, scale=3.0)  # x_u itself exceeds 1: the zero-filled "method" overshoots too
    patch_networks(monkeypatch)
    seen = []
    policy = recon_stage.clip_output
    monkeypatch.setattr(recon_stage, "clip_output", lambda image: seen.append(image.clone()) or policy(image))
    for method in sorted(RECONSTRUCTORS):
        hp = BASELINE_HP.get(method, ldpm_hp())
        weights = {"model": str(tmp_path / "unused.safetensors")} if method in BASELINE_HP and hp else {}
        if method.startswith("cs_"):
            hp, weights = CS_HP, {"tuned": str(tmp_path / "tuned.json")}
            (tmp_path / "tuned.json").write_text('{"chosen": {"lam": 0.001}}')
        seen.clear()
        recon_stage.reconstruct(method, tmp_path / "test.h5", tmp_path / "test.csv", tmp_path / "masks.npz",
                                tmp_path / f"{method}.h5", weights=weights, hp=hp, device="cpu")
        raw, out = torch.cat(seen)[:, 0].numpy(), read_recon(tmp_path / f"{method}.h5")
        assert raw.max() > 1.5, f"{method}: its output was clipped from above before the policy"
        assert method in MAGNITUDE_OUTPUTS or raw.min() < 0, f"{method}: its negatives were removed before the policy"
        assert (out[raw < 0] == 0).all(), f"{method}: negatives must become 0"
        assert (out[raw >= 0] == raw[raw >= 0]).all(), f"{method}: everything else is kept as it is"
        assert out.max() > 1.5 and out.min() >= 0


def spying_method(weights, hp, device):
    """A registered method that records the measurement it is given and answers 3·x_u − 0.2."""
    def run(meas):
        SEEN.append((meas.x_u.clone(), meas.k_u.clone()))
        return 3 * meas.x_u - 0.2
    return run


SEEN: list = []


def test_under_input_normalisation_no_method_sees_the_ground_truth_scale(tmp_path, monkeypatch):
    """The same anatomy stored at two scales (ground-truth volume maximum 1 and 7.5): with data.normalise input the
    method receives the same x_u and k_u, and its output is scaled back into each set's units; with gt_max (the
    paper's protocol, the default) it receives the stored slices' measurement as it is, and the output is saved
    as it leaves the policy."""
    from ldpm import stages

    monkeypatch.setitem(stages.RECONSTRUCTORS, "spy", f"{__name__}:spying_method")
    gt, outs, inputs = {}, {}, {}
    for rule in ("input", "gt_max"):
        for scale in (1.0, 7.5):
            folder = tmp_path / f"{rule}{scale}"
            gt[scale], meta = write_test_set(folder, scale=scale)
            SEEN.clear()
            recon_stage.reconstruct("spy", folder / "test.h5", folder / "test.csv", folder / "masks.npz",
                                    folder / "o.h5", device="cpu", normalise=rule)
            inputs[rule, scale] = [torch.cat(t) for t in zip(*SEEN)]
            outs[rule, scale] = read_recon(folder / "o.h5")
    for a, b in zip(inputs["input", 1.0], inputs["input", 7.5]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs["input", 7.5], 7.5 * outs["input", 1.0], rtol=1e-5, atol=2e-5)  # float32
    assert inputs["input", 1.0][0].amax(dim=(-2, -1)).flatten().tolist() == pytest.approx([1.0] * len(gt[1.0]))
    # gt_max: exactly the measurement of the stored slices, output = 3·x_u − 0.2 with negatives set to 0
    masks = load_test_masks(tmp_path / "gt_max1.0" / "masks.npz", meta.slice_id.tolist())
    for scale in (1.0, 7.5):
        k_u, x_u = undersample(torch.from_numpy(gt[scale])[:, None], masks)
        assert torch.equal(inputs["gt_max", scale][0], x_u) and torch.equal(inputs["gt_max", scale][1], k_u)
        expected = (3 * x_u - 0.2)[:, 0].numpy()
        assert (outs["gt_max", scale] == np.where(expected < 0, 0, expected)).all()


def test_training_measurements_follow_the_same_rule(tmp_path):
    """Training batches and validation sets (every MRI-trained stage reads them): under input, the same images
    stored at another scale give the same x, k_u and x_u; under gt_max the stored images as they are, the same
    as a masks block without the key (what every stage saw before data.normalise)."""
    from ldpm.baselines import undersampled_batch, validation_set
    from ldpm.train import EpochSampler

    masks_cfg = {"accelerations": [4], "center_fractions": [0.08]}
    batches = {}
    for scale in (1.0, 7.5):
        gt, _ = write_test_set(tmp_path / str(scale), scale=scale, name="val")
        images = torch.from_numpy(gt)
        sampler = EpochSampler(len(images), 4, 0)
        for rule in ("input", "gt_max", None):
            cfg = masks_cfg | ({"normalise": rule} if rule else {})
            x, meas = undersampled_batch(images, sampler, 3, 0, cfg, torch.device("cpu"))
            val = validation_set({"val": tmp_path / str(scale) / "val.h5"}, 4, 0, cfg, torch.device("cpu"), "t")
            batches[rule, scale] = (x, meas.mask, meas.k_u, meas.x_u, val.x, val.parts[0].k_u, val.parts[0].x_u)
        assert torch.equal(batches["gt_max", scale][0], images[sampler.batch(3)][:, None])
        for a, b in zip(batches["gt_max", scale], batches[None, scale]):
            assert torch.equal(a, b)
    for a, b in zip(batches["input", 1.0], batches["input", 7.5]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class TinyScore(nn.Module):
    """One convolution in place of Score-MRI's U-Net: the training loop around it is what is tested."""

    config: dict = {}

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, sigma):
        return SimpleNamespace(sample=self.conv(x))


@pytest.mark.parametrize("stage", ["score_mri", "mrvae"])
def test_stages_that_learn_images_see_them_in_the_units_of_the_scaled_measurement(tmp_path, monkeypatch, stage):
    """Score-MRI's prior and the MR-VAE learn images, not measurements. Under input each training image reaches them
    divided by its zero-filled maximum (under a fresh training mask), so data stored at another scale changes
    nothing they see; under gt_max they see the stored images as they are."""
    from ldpm.baselines import score_mri
    from ldpm.config import validate_config
    from ldpm.method import training
    from ldpm.models.latent import tiny_vae

    seen = []
    if stage == "score_mri":
        monkeypatch.setattr(score_mri, "build_score_model", lambda config, size: TinyScore())
        dsm_loss = score_mri.dsm_loss
        monkeypatch.setattr(score_mri, "dsm_loss", lambda fn, x, *a: seen.append(x.clone()) or dsm_loss(fn, x, *a))
        hp = {"model": "tiny", "sigma_min": 0.01, "sigma_max": 20.0, "lr": 1e-3, "batch_size": 6, "epochs": 1,
              "ckpt_every": 100}
        train = score_mri.train_score_mri
    else:
        defaults = validate_config({})["ldpm"]
        monkeypatch.setattr(training, "pretrained_vae", lambda inputs, hp: tiny_vae(channels=8, norm_num_groups=4))
        loss, factor = training.mrvae_loss, training.latent_scaling_factor
        monkeypatch.setattr(training, "mrvae_loss",
                            lambda x3, *a, **k: seen.append((x3[:, :1] + 1) / 2) or loss(x3, *a, **k))  # [-1, 1]
        monkeypatch.setattr(training, "latent_scaling_factor", lambda vae, x: seen.append(x.clone()) or factor(vae, x))
        hp = {"sd_dir": None, "vgg_weights": None, "vae": {"channels": 8, "norm_num_groups": 4},
              "mrvae": defaults["mrvae"] | {"batch_size": 6, "epochs": 1, "disc_start": 10}}  # no GAN step: faster
        train = training.train_mrvae
    got = {}
    for rule in ("input", "gt_max"):
        for scale in (1.0, 7.5):
            folder = tmp_path / f"{rule}{scale}"
            write_test_set(folder, scale=scale, name="train")
            seen.clear()
            train({"train": str(folder / "train.h5")}, folder / "w.safetensors", folder / "ck", hp,
                  {"accelerations": [4], "center_fractions": [0.08], "normalise": rule}, 0, "cpu", val_slices=0)
            got[rule, scale] = [x.detach() for x in seen]
    assert len(got["input", 1.0]) == (1 if stage == "score_mri" else 2)  # one step (+ the MR-VAE's latent scale)
    for a, b in zip(got["input", 1.0], got["input", 7.5]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(got["gt_max", 1.0], got["gt_max", 7.5]):
        torch.testing.assert_close(7.5 * a, b)


# ------------------------------------------------------------------------------ tuning, diagnostics, Fig 3
def test_sampler_tuning_scores_clipped_outputs_with_the_one_psnr(tmp_path, monkeypatch):
    """The validation PSNR that picks the sampler settings is `protocol.psnr` of the output as the reconstruct stage
    leaves it (negatives 0, values above 1 kept), with the slice's volume maximum as data range."""
    from ldpm.method.tuning import tune_sampler

    gt, meta = write_test_set(tmp_path, scale=2.0, name="val")
    patch_networks(monkeypatch)
    calls = []
    one_psnr = protocol.psnr
    monkeypatch.setattr(protocol, "psnr", lambda g, p, r: calls.append((g, p, r)) or one_psnr(g, p, r))
    hp = ldpm_hp(tuning={"grid": {"guidance_scale": [0.1, 0.3]}, "val_slices": 4})
    tune_sampler(tmp_path / "val.h5", tmp_path / "val.csv", {}, hp, 4, 0.08, 0, tmp_path / "t.json",
                 tmp_path / "t.csv", device="cpu")
    assert len(calls) == 2 * 4, "one PSNR per validation slice and grid row"
    preds = np.stack([p for _, p, _ in calls])
    assert preds.min() == 0 and preds.max() > 1.5
    volume_max = {g.tobytes(): 2.0 for g in gt}  # every stored volume has maximum 2 here
    assert all(r == pytest.approx(volume_max[g.tobytes()]) for g, _, r in calls)


def test_ldpm_diagnostics_clip_every_row_alike_and_follow_the_normalisation(tmp_path, monkeypatch):
    from ldpm.method import diagnostics

    gt, meta = write_test_set(tmp_path)
    masks = load_test_masks(tmp_path / "masks.npz", meta.slice_id.tolist())
    monkeypatch.setattr(diagnostics, "load_ldpm_models", fake_ldpm_models)
    rows = diagnostics.diagnostic_images(gt, masks, {}, ldpm_hp(), 0, "cpu")
    for row in ("vae_sketch", "vae_gt", "ldpm_zero_condition", "ldpm_unguided"):
        assert rows[row].min() == 0 and rows[row].max() > 1.5, f"{row}: negatives to 0, nothing clipped above"
    assert all(image.min() >= 0 for image in rows.values())
    # under input every row is computed in the units of the scaled measurement, so it scales with the stored data
    small = diagnostics.diagnostic_images(gt, masks, {}, ldpm_hp(), 0, "cpu", normalise="input")
    large = diagnostics.diagnostic_images(7.5 * gt, masks, {}, ldpm_hp(), 0, "cpu", normalise="input")
    for row in small:
        np.testing.assert_allclose(large[row], 7.5 * small[row], rtol=1e-4, atol=1e-5, err_msg=row)


def test_fig3_vae_reconstructions_lose_only_their_negatives(tmp_path):
    from ldpm.evaluate.ablations import autoencode

    gt, _ = write_test_set(tmp_path)
    out = autoencode(OvershootVAE(), gt)
    assert out.min() == 0 and out.max() > 1.5


# ----------------------------------------------------------------------------------------------------- PSNR
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_psnr_equals_scikit_image(dtype):
    from skimage.metrics import peak_signal_noise_ratio

    rng = np.random.default_rng(1)
    gt = rng.random((3, 16, 16)).astype(dtype)
    pred = (gt + 0.05 * rng.standard_normal(gt.shape)).astype(dtype)
    for g, p, r in [(gt, pred, float(gt.max())), (gt[1], pred[1], float(gt[1].max())), (gt, pred, 2.5)]:
        assert protocol.psnr(g, p, r) == pytest.approx(peak_signal_noise_ratio(g, p, data_range=r), rel=1e-12)
    assert protocol.psnr(gt, gt, 1.0) == float("inf")


def test_metrics_figures_and_validation_call_the_one_psnr(tmp_path, monkeypatch):
    """Spy on `protocol.psnr`, the one PSNR: the per-volume and per-slice metrics and Fig 2 pass the ground-truth
    volume maximum, training-time validation (`psnr_ssim`, single slices) the slice maximum."""
    from ldpm.baselines import psnr_ssim
    from ldpm.evaluate.figures import figure2
    from ldpm.evaluate.metrics import evaluate

    gt, meta = write_test_set(tmp_path, scale=1.0)
    rng = np.random.default_rng(2)
    for name in ("zero_filled", "unet"):
        with h5py.File(tmp_path / f"{name}.h5", "w") as fh:
            fh["recon"] = gt + 0.05 * rng.standard_normal(gt.shape).astype(np.float32)
    calls = []
    one_psnr = protocol.psnr
    monkeypatch.setattr(protocol, "psnr", lambda g, p, r: calls.append((np.shape(g), r)) or one_psnr(g, p, r))
    evaluate(tmp_path / "test.h5", tmp_path / "test.csv", tmp_path / "unet.h5", tmp_path / "masks.npz",
                     "unet", 4, tmp_path / "v.csv", tmp_path / "s.csv")
    n_volumes, n_slices = meta.volume.nunique(), len(meta)
    assert calls.count(((2, SIZE, SIZE), 1.0)) == n_volumes  # one per volume, data range = its maximum 1
    assert calls.count(((SIZE, SIZE), 1.0)) == n_slices  # one per slice, still the volume maximum
    calls.clear()
    figure2(tmp_path / "test.h5", tmp_path / "test.csv", {"unet": tmp_path / "unet.h5"}, tmp_path / "f.png",
            zero_filled=tmp_path / "zero_filled.h5", split_filter={"dataset": "brain"})
    assert len(calls) == 2 * 2 and all(r == 1.0 for _, r in calls)  # 2 examples × (zero-filled, U-Net)
    calls.clear()
    psnr_ssim(gt[:2], gt[:2] * 0.9)
    assert [r for _, r in calls] == [float(gt[0].max()), float(gt[1].max())]


# ----------------------------------------------------------------------------------------------- statistics
def test_stats_means_cis_and_tests_agree_in_sign_where_volume_and_subject_means_do_not(tmp_path):
    """Subject p0 has 10 volumes on which LDPM is 1 dB better; 7 subjects have one volume each on which it is 1 dB
    worse. Over volumes LDPM looks better (+3/17 dB), over subjects worse (−0.75 dB): the statistics table reports
    the subject level throughout, so the means, the mean difference, its CI and the test say the same thing."""
    from ldpm.evaluate.stats import stats_table

    rows = []
    for subject, n_volumes, diff in [("p0", 10, 1.0)] + [(f"p{i}", 1, -1.0) for i in range(1, 8)]:
        for v in range(n_volumes):
            base = 30 + 0.1 * v + int(subject[1:])
            rows += [{"method": "unet", "patient_id": subject, "volume": f"{subject}v{v}", "psnr": base},
                     {"method": "ldpm", "patient_id": subject, "volume": f"{subject}v{v}", "psnr": base + diff}]
    vols = pd.DataFrame(rows).assign(dataset="brain", acceleration=8)
    by_volume = vols.pivot_table(index="volume", columns="method", values="psnr")
    assert (by_volume.ldpm - by_volume.unet).mean() > 0, "the case: better on average over volumes"
    table = stats_table(vols, ["unet", "ldpm"], {}, 8, tmp_path / "s", n_boot=2000).set_index("method")
    row = table.loc["unet"]
    assert table.loc["ldpm", "mean"] - row["mean"] == pytest.approx(-0.75)
    assert row.mean_diff_vs_ref == pytest.approx(-0.75)
    assert row.diff_ci_low <= row.mean_diff_vs_ref <= row.diff_ci_high < 0
    for method in ("unet", "ldpm"):
        assert table.loc[method, "ci_low"] <= table.loc[method, "mean"] <= table.loc[method, "ci_high"]
    md = (tmp_path / "s.md").read_text()
    assert "mean over test subjects" in md and "bootstrap CI over subjects" in md


def test_beyond_paper_rows_form_their_own_holm_family(tmp_path):
    from ldpm.evaluate.stats import holm, stats_table

    rng = np.random.default_rng(4)
    methods = ["zero_filled", "unet", "ldpm", "ldpm_final_dc", "ldpm_mean_k"]
    rows = [{"method": m, "patient_id": f"p{s}", "volume": f"v{s}", "psnr": 30 + rng.normal(0.5 * i, 1.0),
             "ssim": 0.8 + rng.normal(0.01 * i, 0.02)} for s in range(6) for i, m in enumerate(methods)]
    vols = pd.DataFrame(rows).assign(dataset="brain", acceleration=8)
    full = stats_table(vols, methods, {}, 8, tmp_path / "full", n_boot=50)
    paper = stats_table(vols[vols.method.isin(methods[:3])], methods[:3], {}, 8, tmp_path / "paper", n_boot=50)
    tests = full[full.method != "ldpm"].set_index(["method", "metric"])
    paper_tests = paper[paper.method != "ldpm"].set_index(["method", "metric"])
    # adding the beyond-paper rows leaves the paper comparison's adjusted p-values as they were
    assert tests.loc[paper_tests.index, "p_holm"].tolist() == pytest.approx(paper_tests.p_holm.tolist())
    beyond = tests[tests.index.get_level_values("method").isin(["ldpm_final_dc", "ldpm_mean_k"])]
    assert len(beyond) == 4 and beyond.p_holm.tolist() == pytest.approx(holm(beyond.p.tolist()))
    assert set(beyond.holm_family) == {"beyond paper"} and set(tests.loc[paper_tests.index, "holm_family"]) == {"paper"}
    assert "the rows beyond the paper a family of their own: Holm over 2 methods × 2 metrics = 4 tests" in (
        tmp_path / "full.md").read_text()
