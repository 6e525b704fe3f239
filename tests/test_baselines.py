"""E2E-VarNet, SwinMR and Score-MRI baselines: shapes, training signal, official weight formats, data consistency,
SwinMR's loss, DSM loss, PC sampler physics."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from ldpm.physics import Measurement
from ldpm import LdpmError
from ldpm.baselines import score_mri, swinmr, varnet
from ldpm.baselines.unet import build_unet, unet_reconstruct
from ldpm.io import write_images
from ldpm.physics import fft2, ifft2, undersample
from ldpm.weights import PAPER_UNET, PAPER_VARNET, load_official_unet, load_official_varnet

TINY_VARNET = {"num_cascades": 2, "chans": 4, "pools": 2, "sens_chans": 4, "sens_pools": 2}
SMALL_UNET = {"chans": 4, "num_pool_layers": 2}


def smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Blurry random blobs in [0, 1]: image-like enough for a few optimisation steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, None)
    return x / x.amax(dim=(-2, -1), keepdim=True)


def column_mask(n: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(n, 1, 1, width, generator=g) < 0.25).float()
    m[..., width // 2 - 2: width // 2 + 2] = 1
    return m


# ---------------------------------------------------------------- E2E-VarNet

def test_varnet_shape_and_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = varnet.build_varnet(TINY_VARNET)
    x, mask = smooth_images(4), column_mask(4, 32)
    k_u, _ = undersample(x, mask)
    assert varnet.varnet_reconstruct(model, k_u, mask).shape == x.shape
    loss_fn, data_range = varnet.SSIMLoss(), torch.ones(4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = loss_fn(varnet.varnet_reconstruct(model, k_u, mask), x, data_range=data_range)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_single_coil_sensitivity_map_is_phase_only():
    model = varnet.build_varnet(TINY_VARNET)
    x, mask = smooth_images(2), column_mask(2, 32)
    k_u, _ = undersample(x, mask)
    with torch.no_grad():
        sens = model.sens_net(torch.view_as_real(k_u).contiguous(), mask[..., None].bool(), None)
    torch.testing.assert_close(torch.view_as_complex(sens.contiguous()).abs(), torch.ones(2, 1, 32, 32))


def _official_roundtrip(tmp_path, model, prefix, load, hp, run):
    """Save `model` as a plain and as a Lightning-wrapped state dict; both load to identical outputs."""
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pt"
    torch.save(model.state_dict(), plain)
    lightning = {prefix + k: v for k, v in model.state_dict().items()}
    lightning["loss.w"] = torch.ones(1, 1, 7, 7) / 49  # the SSIM loss buffer a fastMRI Lightning module carries
    torch.save({"epoch": 3, "state_dict": lightning}, wrapped)
    with torch.no_grad():
        expected = run(model.eval())
        for path in (plain, wrapped):
            torch.testing.assert_close(run(load(path, hp)), expected, rtol=0, atol=0)


def test_official_state_dicts_load_small_architectures(tmp_path):
    torch.manual_seed(0)
    x, mask = smooth_images(2), column_mask(2, 32)
    k_u, x_u = undersample(x, mask)
    _official_roundtrip(tmp_path, varnet.build_varnet(TINY_VARNET), "varnet.", load_official_varnet,
                        TINY_VARNET, lambda m: varnet.varnet_reconstruct(m, k_u, mask))
    _official_roundtrip(tmp_path, build_unet(PAPER_UNET | SMALL_UNET), "unet.",
                        load_official_unet, SMALL_UNET, lambda m: unet_reconstruct(m, x_u))


@pytest.mark.slow
def test_official_state_dicts_load_paper_architectures(tmp_path):
    torch.manual_seed(0)
    x, mask = smooth_images(1, 32), column_mask(1, 32)
    k_u, x_u = undersample(x, mask)
    model = varnet.build_varnet(PAPER_VARNET)
    assert sum(p.numel() for p in model.parameters()) > 25e6  # E2E-VarNet is ~30M parameters
    _official_roundtrip(tmp_path, model, "varnet.", load_official_varnet, None,
                        lambda m: varnet.varnet_reconstruct(m, k_u, mask))
    _official_roundtrip(tmp_path, build_unet(PAPER_UNET), "unet.", load_official_unet, None,
                        lambda m: unet_reconstruct(m, x_u))


def test_official_weights_missing_corrupt_or_mismatched_are_named(tmp_path):
    with pytest.raises(LdpmError, match="nope.pt: official fastMRI weights not found"):
        load_official_varnet(tmp_path / "nope.pt", TINY_VARNET)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(LdpmError, match="bad.pt: not a readable PyTorch state dict"):
        load_official_unet(tmp_path / "bad.pt", SMALL_UNET)
    torch.save(varnet.build_varnet(TINY_VARNET).state_dict(), tmp_path / "other.pt")
    with pytest.raises(LdpmError, match="other.pt: does not match the U-Net architecture"):
        load_official_unet(tmp_path / "other.pt", SMALL_UNET)


# ---------------------------------------------------------------- Score-MRI

def test_dsm_loss_vanishes_for_the_exact_score_of_a_point_mass():
    # p_σ = N(x0, σ²I) for a single image x0 has score −(x − x0)/σ²: then σ·s + z = 0 for every t and z.
    x0 = smooth_images(3)
    exact = lambda x, sigma: -(x - x0) / sigma[:, None, None, None] ** 2  # noqa: E731
    loss = score_mri.dsm_loss(exact, x0, 0.01, 50.0, torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8
    wrong_sign = lambda x, sigma: -exact(x, sigma)  # noqa: E731
    assert score_mri.dsm_loss(wrong_sign, x0, 0.01, 50.0, torch.Generator().manual_seed(0)).item() > 3


def test_score_model_maps_shapes_and_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = score_mri.build_score_model("tiny", 32)
    x = smooth_images(4)
    assert model(x, torch.full((4,), 2.0)).sample.shape == x.shape
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):  # same t and z every step: a fixed objective
        loss = score_mri.dsm_loss(lambda a, s: model(a, s).sample, x, 0.01, 20.0, torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_scheduler_steps_equal_hand_written_reverse_diffusion_and_langevin():
    n, sigma_min, sigma_max, snr = 50, 0.01, 20.0, 0.16
    sched = score_mri.make_scheduler(n, snr, 1, sigma_min, sigma_max)
    x, score = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    discrete = torch.exp(torch.linspace(torch.log(torch.tensor(sigma_min)), torch.log(torch.tensor(sigma_max)), n))
    for i in (0, 17, n - 1):
        t = sched.timesteps[i]
        # network input σ: continuous σ(t_i), t_i from 1 down to ε
        torch.testing.assert_close(sched.sigmas[i], score_mri.sigma_of_t(t, sigma_min, sigma_max))
        # predictor (Song's ReverseDiffusionPredictor on the discretised VE-SDE): G² = σ_j² − σ_{j−1}²
        j = n - 1 - i
        g2 = discrete[j] ** 2 - (discrete[j - 1] ** 2 if j > 0 else 0.0)
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        mean = x + g2 * score
        out = sched.step_pred(score, t, x, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(out.prev_sample_mean, mean)
        torch.testing.assert_close(out.prev_sample, mean + g2.sqrt() * z)
    # corrector (Song's LangevinCorrector): ε = 2 (snr ‖z‖ / ‖s‖)², x + ε s + √(2ε) z
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    eps = 2 * (snr * z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean()) ** 2
    out = sched.step_correct(score, x, generator=torch.Generator().manual_seed(7)).prev_sample
    torch.testing.assert_close(out, x + eps * score + (2 * eps).sqrt() * z)


def mirror(mask: torch.Tensor) -> torch.Tensor:
    """Column j of a centred FFT holds frequency j − W/2; its mirror −f sits at column (W − j) mod W."""
    w = mask.shape[-1]
    return mask[..., (w - torch.arange(w)) % w]


def test_sampler_output_holds_the_measurements():
    torch.manual_seed(0)
    model = score_mri.build_score_model("tiny", 32).eval()
    x = smooth_images(2)
    asym = column_mask(2, 32, seed=3)
    for mask in (asym, torch.maximum(asym, mirror(asym))):
        k_u, _ = undersample(x, mask)
        out = score_mri.score_mri_sample(model, Measurement(k_u, mask), n_steps=4, snr=0.16, sigma_max=20.0,
                                         generator=torch.Generator().manual_seed(0), progress=False)
        assert out.shape == x.shape and out.dtype == torch.float32
        # Re(·) after DC keeps a sampled line exactly when its mirror line is sampled too (Hermitian pair)
        exact = (mask * mirror(mask)).expand_as(k_u).bool()
        torch.testing.assert_close(fft2(out)[exact], k_u[exact], rtol=0, atol=1e-4)
    assert exact.sum() == mask.expand_as(k_u).sum()  # the symmetrised mask: every sampled line is exact


# ---------------------------------------------------------------- training entry points and reconstructors

def test_train_and_reconstruct_end_to_end(tmp_path):
    """train_* write safetensors that the reconstructor loaders accept (images written as preprocess does)."""
    write_images(tmp_path / "train.h5", smooth_images(8, seed=1)[:, 0].numpy())
    masks = {"accelerations": [8], "center_fractions": [0.04]}
    x, mask = smooth_images(2, seed=2), column_mask(2, 32)
    k_u, x_u = undersample(x, mask)

    hp_v = TINY_VARNET | {"lr": 1e-3, "batch_size": 4, "epochs": 1, "ckpt_every": 100}
    varnet.train_varnet({"train": tmp_path / "train.h5"}, tmp_path / "varnet.safetensors", tmp_path / "ck_v", hp_v, masks, 0,
                        "cpu")
    recon = varnet.reconstructor({"model": tmp_path / "varnet.safetensors"}, hp_v, torch.device("cpu"))
    with torch.no_grad():
        assert recon(Measurement(k_u, mask, x_u)).shape == x.shape

    hp_s = {"model": "tiny", "sigma_min": 0.01, "sigma_max": 20.0, "lr": 2e-4, "batch_size": 4, "epochs": 1,
            "ckpt_every": 100, "n_steps": 2, "snr": 0.16, "n_corrector": 1}
    history = score_mri.train_score_mri({"train": tmp_path / "train.h5"}, tmp_path / "score.safetensors",
                                        tmp_path / "ck_s", hp_s, masks, 0, "cpu")
    assert len(history) > 0 and all(torch.isfinite(torch.tensor(h["dsm"])) for h in history)
    recon = score_mri.reconstructor({"model": tmp_path / "score.safetensors"}, hp_s, torch.device("cpu"))
    out = recon(Measurement(k_u, mask, x_u))
    assert out.shape == x.shape and torch.isfinite(out).all()  # raw: the reconstruct stage clips (test_evaluate)
    with pytest.raises(LdpmError, match="score_mri.sigma_max"):
        score_mri.reconstructor({"model": tmp_path / "score.safetensors"}, hp_s | {"sigma_max": 378}, torch.device("cpu"))
    with pytest.raises(LdpmError, match="missing.safetensors: weights file not found"):
        score_mri.reconstructor({"model": tmp_path / "missing.safetensors"}, hp_s, torch.device("cpu"))


def test_score_training_resumes_to_the_same_ema_weights(tmp_path):
    """The EMA copy is checkpointed with the model: an interrupted run ends where an uninterrupted one does."""
    from safetensors.torch import load_file

    write_images(tmp_path / "train.h5", smooth_images(4, seed=1)[:, 0].numpy())
    hp = {"model": "tiny", "sigma_min": 0.01, "sigma_max": 20.0, "lr": 1e-3, "batch_size": 2, "ckpt_every": 1,
          "warmup": 3, "ema_decay": 0.9}
    run = lambda name, ck, epochs: score_mri.train_score_mri(  # noqa: E731
        {"train": tmp_path / "train.h5"}, tmp_path / name, tmp_path / ck, hp | {"epochs": epochs}, {}, 0, "cpu")
    run("full.safetensors", "ck_full", 2)
    run("part.safetensors", "ck_resume", 1)
    run("resumed.safetensors", "ck_resume", 2)
    full, resumed = load_file(tmp_path / "full.safetensors"), load_file(tmp_path / "resumed.safetensors")
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0)


@pytest.mark.slow
def test_score_mri_paper_config_forward_at_320():
    model = score_mri.build_score_model("paper", 320).eval()
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.time()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 320, 320), torch.tensor([10.0])).sample
    print(f"NCSN++ paper config: {n_params / 1e6:.1f}M parameters, one 320² forward {time.time() - t0:.1f} s")
    assert out.shape == (1, 1, 320, 320) and torch.isfinite(out).all()


# ---------------------------------------------------------------- data consistency and official weights, per method

class _Zero(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_varnet_soft_dc_holds_the_measurements_when_the_last_cascade_is_a_projection():
    """VarNet's DC is soft, k ← k − η·M(k − k_u) − R(k): with learned η and regulariser R the sampled lines only
    move towards k_u. With η = 1 and R = 0 in the last cascade it is the projection onto the measurements: then,
    through our 1-coil wrapper (mask layout, coil axis), the final k-space holds k_u exactly on the sampled lines
    and the output is the magnitude of that image."""
    torch.manual_seed(0)
    model = varnet.build_varnet(TINY_VARNET).eval()
    x, mask = smooth_images(2), column_mask(2, 32)
    k_u, _ = undersample(x, mask)
    last = model.cascades[-1]
    last.model = _Zero()
    captured = {}
    last.register_forward_hook(lambda m, i, out: captured.update(k=torch.view_as_complex(out.contiguous())))
    with torch.no_grad():
        last.dc_weight.fill_(1.0)
        out = varnet.varnet_reconstruct(model, k_u, mask)
        k = captured["k"]
        sampled = mask.expand_as(k_u).bool()
        torch.testing.assert_close(k[sampled], k_u[sampled], rtol=0, atol=1e-5)
        assert (k[~sampled] - k_u[~sampled]).abs().max() > 1e-2  # the other lines were filled in, not zeroed
        torch.testing.assert_close(out, ifft2(k).abs(), rtol=0, atol=1e-5)
        last.dc_weight.fill_(0.5)  # soft: halfway from the cascade's input to the measurements
        varnet.varnet_reconstruct(model, k_u, mask)
        assert (captured["k"] - k_u)[sampled].abs().max() > 1e-3


def test_official_state_dicts_load_through_the_reconstructors(tmp_path):
    """The Snakemake path: hp official=true makes the reconstructor read an official-format (Lightning) state dict."""
    from ldpm.baselines import unet

    torch.manual_seed(0)
    x, mask = smooth_images(2), column_mask(2, 32)
    k_u, x_u = undersample(x, mask)
    cases = [(varnet, varnet.build_varnet(TINY_VARNET), "varnet.", TINY_VARNET),
             (unet, build_unet(PAPER_UNET | SMALL_UNET), "unet.", SMALL_UNET)]
    for module, model, prefix, hp in cases:
        path = tmp_path / f"{prefix}ckpt"
        torch.save({"state_dict": {prefix + k: v for k, v in model.state_dict().items()}}, path)
        recon = module.reconstructor({"model": path}, hp | {"official": True}, torch.device("cpu"))
        expected = (varnet.varnet_reconstruct(model.eval(), k_u, mask) if module is varnet
                    else unet_reconstruct(model.eval(), x_u))
        with torch.no_grad():
            torch.testing.assert_close(recon(Measurement(k_u, mask, x_u)), expected, rtol=0, atol=0)


def test_official_weights_in_config_replace_training_and_a_missing_file_is_named(tmp_path):
    """varnet.official: true plans no varnet training and reads `weights`; a missing file stops the run first."""
    import yaml
    from test_pipeline import small_config, snakemake

    cfg = small_config() | {"methods": ["zero_filled", "varnet"]}
    # trained on fastMRI data this run does not read: its folders (never the generated test data's)
    cfg["varnet"].update(official=True, weights="weights/varnet_brain.pt", trained_on=["fastmri/multicoil_train"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    missing = snakemake(tmp_path, "-n")
    assert missing.returncode != 0
    assert "config key varnet.weights: weights/varnet_brain.pt not found" in missing.stderr.strip().splitlines()[-1]
    (tmp_path / "weights").mkdir()
    torch.save(varnet.build_varnet(cfg["varnet"]).state_dict(), tmp_path / "weights/varnet_brain.pt")
    planned = snakemake(tmp_path, "-n", "-p")
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "results/recon/varnet/seed0/magnitude_random_af8.h5" in planned.stdout
    assert "results/models/seed0/varnet" not in planned.stdout
    # Table I's footnotes say whose weights the row uses
    tables_cmd = next(line for line in planned.stdout.splitlines() if "ldpm tables" in line)
    assert "varnet: fastMRI" in tables_cmd and "official brain weights (weights/varnet_brain.pt)" in tables_cmd


# ---------------------------------------------------------------- SwinMR

TINY_SWINMR = {"embed_dim": 16, "depths": [1], "num_heads": [2], "window_size": 8, "mlp_ratio": 2.0,
               "alpha": 15.0, "beta": 0.1, "gamma": 0.0025, "vgg_weights": None, "patch_size": None, "augment": False,
               "lr": 1e-3, "lr_milestones": [], "lr_gamma": 0.5, "batch_size": 4, "epochs": 1, "ckpt_every": 100}


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory) -> str:
    """torchvision-format vgg19 feature weights, seeded random: a stand-in for ImageNet's, to check the wiring."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}, path)
    return str(path)


def _charb(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sqrt((a - b) ** 2 + 1e-9)))


def test_swinmr_loss_terms_match_an_independent_computation(vgg19_file):
    """15·Charb(image) + 0.1·½[Charb(Re) + Charb(Im)] of numpy's unnormalised FFT over all axes (SwinMR's fft_map)
    + 0.0025·VGG19 perceptual (torchvision's network cut as SwinMR cuts it, pre-ReLU conv outputs)."""
    from torchvision.models.vgg import cfgs, make_layers

    x = smooth_images(2, seed=1)
    x_rec = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    a, b = x_rec.numpy().astype(np.float64), x.numpy().astype(np.float64)
    image = _charb(a, b)
    ka, kb = np.fft.fftn(a), np.fft.fftn(b)
    freq = (_charb(ka.real, kb.real) + _charb(ka.imag, kb.imag)) / 2

    total, terms = swinmr.swinmr_loss(x_rec, x)
    assert terms["perceptual_on"] == 0 and terms["perceptual"] == 0
    assert terms["image"] == pytest.approx(image, rel=1e-5)
    assert terms["freq"] == pytest.approx(freq, rel=1e-4)
    assert float(total) == pytest.approx(15 * image + 0.1 * freq, rel=1e-4)

    net = make_layers(cfgs["E"])
    net.load_state_dict({k.removeprefix("features."): v for k, v in torch.load(vgg19_file, weights_only=True).items()})
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def feats(im):  # SwinMR's VGGFeatureExtractor: children (l_prev, l] of vgg19.features, outputs cloned
        h, out, prev = (im.repeat(1, 3, 1, 1) - mean) / std, [], -1
        for layer in (2, 7, 16, 25, 34):
            h = net[prev + 1: layer + 1](h)
            out.append(h.clone())
            prev = layer
        return out

    with torch.no_grad():
        expected = sum(w * (p - q).abs().mean() for w, p, q in zip((0.1, 0.1, 1, 1, 1), feats(x_rec), feats(x)))
        vgg = swinmr.SwinMRPerceptual(vgg19_file)
        total, terms = swinmr.swinmr_loss(x_rec, x, vgg)
    assert terms["perceptual_on"] == 1
    assert terms["perceptual"] == pytest.approx(float(expected), rel=1e-4)
    assert float(total) == pytest.approx(15 * image + 0.1 * freq + 0.0025 * float(expected), rel=1e-4)


def test_swinmr_patches_cut_the_same_window_and_apply_the_same_flip_or_rotation():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    rng = np.random.default_rng(0)
    a, b = swinmr.patches(x, x + 1000, 8, False, rng)
    assert a.shape == (2, 1, 8, 8) and (b - a == 1000).all()
    assert all(any(torch.equal(a[k], x[k, :, i:i + 8, j:j + 8]) for i in range(9) for j in range(9)) for k in range(2))
    dihedral = [torch.rot90(x, r, dims=(-2, -1)).flip(-1) if f else torch.rot90(x, r, dims=(-2, -1))
                for f in (0, 1) for r in range(4)]
    seen = set()
    for _ in range(20):  # each image gets one of the 8 flips/rotations, all 8 occur
        a, b = swinmr.patches(x, x + 1000, None, True, rng)
        assert (b - a == 1000).all()
        for k in range(2):
            modes = [m for m, d in enumerate(dihedral) if torch.equal(a[k], d[k])]
            assert len(modes) == 1
            seen.add(modes[0])
    assert seen == set(range(8))


def test_swinmr_lr_schedule_halves_at_milestones():
    hp = {"lr": 2e-4, "lr_gamma": 0.5, "lr_milestones": [10, 20]}
    assert [swinmr.lr_at(s, hp) for s in (0, 9, 10, 19, 20, 99)] == [2e-4, 2e-4, 1e-4, 1e-4, 5e-5, 5e-5]


def test_swinmr_trains_records_the_perceptual_switch_and_reconstructs(tmp_path, vgg19_file):
    from safetensors import safe_open

    write_images(tmp_path / "train.h5", smooth_images(8, seed=1)[:, 0].numpy())
    masks = {"accelerations": [8], "center_fractions": [0.04]}
    x, mask = smooth_images(2, seed=2), column_mask(2, 32)
    k_u, x_u = undersample(x, mask)
    runs = {"off": TINY_SWINMR, "on": TINY_SWINMR | {"vgg_weights": vgg19_file}}
    for name, hp in runs.items():
        out = tmp_path / f"swinmr_{name}.safetensors"
        history = swinmr.train_swinmr({"train": tmp_path / "train.h5"}, out, tmp_path / f"ck_{name}", hp, masks, 0,
                                      "cpu")
        assert len(history) == 2 and all(h["perceptual_on"] == (name == "on") for h in history)
        with safe_open(str(out), framework="pt") as fh:
            assert fh.metadata()["perceptual"].startswith(name)
    recon = swinmr.reconstructor({"model": out}, hp, torch.device("cpu"))
    with torch.no_grad():
        assert recon(Measurement(k_u, mask, x_u)).shape == x.shape
    with pytest.raises(LdpmError, match="nope.safetensors: weights file not found"):
        swinmr.reconstructor({"model": tmp_path / "nope.safetensors"}, hp, torch.device("cpu"))
    with pytest.raises(LdpmError, match="swinmr.patch_size: 64 is larger than the 32 px training images"):
        swinmr.train_swinmr({"train": tmp_path / "train.h5"}, tmp_path / "x.safetensors", tmp_path / "ck_x",
                            TINY_SWINMR | {"patch_size": 64}, masks, 0, "cpu")
    with pytest.raises(LdpmError, match="VGG weights not found"):
        swinmr.train_swinmr({"train": tmp_path / "train.h5"}, tmp_path / "x.safetensors", tmp_path / "ck_x",
                            TINY_SWINMR | {"vgg_weights": str(tmp_path / "none.pth")}, masks, 0, "cpu")


def test_swinmr_paper_config_is_swinirs_paper_body():
    """SwinMR nPI and the Sketcher's R share one body: the paper SwinMR block builds SwinIR's paper network."""
    from ldpm.models.swinir import SWINIR_CONFIGS, build_swinir

    paper = {"embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8, "mlp_ratio": 2.0}
    assert all(SWINIR_CONFIGS["paper"][k] == v for k, v in paper.items())
    with torch.device("meta"):  # shapes only: no memory, no init
        ours, sketcher_body = swinmr.build_swinmr(paper), build_swinir("paper")
    assert ours.global_residual and 11 < sum(p.numel() for p in ours.parameters()) / 1e6 < 12.5
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(ours) == shapes(sketcher_body)


@pytest.mark.slow
def test_swinmr_paper_config_training_step_on_a_96_patch():
    """SwinMR trains on 96 px patches: a 320² forward + backward of this network needs > 20 GB (the 320² forward
    alone is in test_paper_shapes)."""
    torch.manual_seed(0)
    model = swinmr.build_swinmr({"embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8,
                                 "mlp_ratio": 2.0})
    x = torch.rand(1, 1, 96, 96)
    t0 = time.time()
    loss, _ = swinmr.swinmr_loss(model(x), x)
    loss.backward()
    print(f"SwinMR paper config: one 96² forward + backward {time.time() - t0:.1f} s")
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


def test_score_mri_weights_metadata_is_the_same_bytes_in_every_process():
    """diffusers keeps `_use_default_values` in set order, which changes with the process's hash seed: two runs
    of the same training wrote different safetensors bytes (found comparing two smoke runs). The metadata leaves
    the private keys out and sorts the rest, and still rebuilds the model."""
    from diffusers import UNet2DModel

    model = score_mri.build_score_model("tiny", 32)
    text = score_mri.config_json(model)
    model.config["_use_default_values"] = list(reversed(model.config["_use_default_values"]))
    assert score_mri.config_json(model) == text and "_use_default_values" not in text
    rebuilt = UNet2DModel.from_config(json.loads(text))
    assert list(rebuilt.config.block_out_channels) == list(model.config.block_out_channels)


def test_varnet_runs_a_batch_of_mixed_coil_counts_per_count():
    """Real fastMRI brain mixes coil counts and the coil slices are zero-padded to the batch's most: a padded slice
    gets what it gets alone on its own coils (an all-zero coil would make VarNet's NormUnet divide by 0)."""
    torch.manual_seed(0)
    model = varnet.build_varnet(TINY_VARNET).eval()
    k = torch.randn(3, 4, 16, 16, dtype=torch.complex64)
    k[1, 2:] = 0  # a 2-coil slice padded to 4
    mask = torch.ones(3, 1, 1, 16)
    mask[..., ::3] = 0
    mask[..., 6:10] = 1
    k = k * mask
    with torch.no_grad():
        batch = varnet.varnet_reconstruct(model, k, mask)
        alone = varnet.varnet_reconstruct(model, k[1:2, :2], mask[1:2])
        rest = varnet.varnet_reconstruct(model, k[[0, 2]], mask[[0, 2]])
    assert torch.isfinite(batch).all()
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch[[0, 2]], rest, rtol=1e-5, atol=1e-6)
