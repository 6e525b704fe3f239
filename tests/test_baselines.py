"""E2E-VarNet and Score-MRI baselines: shapes, training signal, official weight formats, DSM loss, PC sampler physics."""

from __future__ import annotations

import time

import pytest
import torch

from ldpm import LdpmError
from ldpm.baselines import score_mri, varnet
from ldpm.baselines.unet import unet_reconstruct
from ldpm.io import write_images
from ldpm.physics import fft2, undersample

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
    _official_roundtrip(tmp_path, varnet.build_varnet(TINY_VARNET), "varnet.", varnet.load_official_varnet,
                        TINY_VARNET, lambda m: varnet.varnet_reconstruct(m, k_u, mask))
    _official_roundtrip(tmp_path, varnet.build_unet(varnet.PAPER_UNET | SMALL_UNET), "unet.",
                        varnet.load_official_unet, SMALL_UNET, lambda m: unet_reconstruct(m, x_u))


@pytest.mark.slow
def test_official_state_dicts_load_paper_architectures(tmp_path):
    torch.manual_seed(0)
    x, mask = smooth_images(1, 32), column_mask(1, 32)
    k_u, x_u = undersample(x, mask)
    model = varnet.build_varnet(varnet.PAPER_VARNET)
    assert sum(p.numel() for p in model.parameters()) > 25e6  # E2E-VarNet is ~30M parameters
    _official_roundtrip(tmp_path, model, "varnet.", varnet.load_official_varnet, None,
                        lambda m: varnet.varnet_reconstruct(m, k_u, mask))
    _official_roundtrip(tmp_path, varnet.build_unet(varnet.PAPER_UNET), "unet.", varnet.load_official_unet, None,
                        lambda m: unet_reconstruct(m, x_u))


def test_official_weights_missing_corrupt_or_mismatched_are_named(tmp_path):
    with pytest.raises(LdpmError, match="nope.pt: official fastMRI weights not found"):
        varnet.load_official_varnet(tmp_path / "nope.pt", TINY_VARNET)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(LdpmError, match="bad.pt: not a readable PyTorch state dict"):
        varnet.load_official_unet(tmp_path / "bad.pt", SMALL_UNET)
    torch.save(varnet.build_varnet(TINY_VARNET).state_dict(), tmp_path / "other.pt")
    with pytest.raises(LdpmError, match="other.pt: does not match the U-Net architecture"):
        varnet.load_official_unet(tmp_path / "other.pt", SMALL_UNET)


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
        out = score_mri.score_mri_sample(model, k_u, mask, n_steps=4, snr=0.16, sigma_max=20.0, clamp=False,
                                         generator=torch.Generator().manual_seed(0), progress=False)
        assert out.shape == x.shape and out.dtype == torch.float32
        # Re(·) after DC keeps a sampled line exactly when its mirror line is sampled too (Hermitian pair)
        exact = (mask * mirror(mask)).expand_as(k_u).bool()
        torch.testing.assert_close(fft2(out)[exact], k_u[exact], rtol=0, atol=1e-4)
    assert exact.sum() == mask.expand_as(k_u).sum()  # the symmetrised mask: every sampled line is exact
    clamped = score_mri.score_mri_sample(model, k_u, mask, n_steps=2, snr=0.16, sigma_max=20.0,
                                         generator=torch.Generator().manual_seed(0), progress=False)
    assert clamped.min() >= 0 and clamped.max() <= 1


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
        assert recon(x_u, k_u, mask).shape == x.shape

    hp_s = {"model": "tiny", "sigma_min": 0.01, "sigma_max": 20.0, "lr": 2e-4, "batch_size": 4, "epochs": 1,
            "ckpt_every": 100, "n_steps": 2, "snr": 0.16, "n_corrector": 1}
    history = score_mri.train_score_mri({"train": tmp_path / "train.h5"}, tmp_path / "score.safetensors",
                                        tmp_path / "ck_s", hp_s, masks, 0, "cpu")
    assert len(history) > 0 and all(torch.isfinite(torch.tensor(h["dsm"])) for h in history)
    recon = score_mri.reconstructor({"model": tmp_path / "score.safetensors"}, hp_s, torch.device("cpu"))
    out = recon(x_u, k_u, mask)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
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
