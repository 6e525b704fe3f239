"""Equation-level checks of LDPM (paper eqs. 3, 5–12) on tiny random-init models."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldpm.physics import Measurement
from ldpm import LdpmError
from ldpm.losses import (PatchDiscriminator, VGGPerceptual, charbonnier, d_hinge_loss, kl_loss, mrvae_loss)
from ldpm.models.latent import (decode, empty_prompt_embedding, encode, load_sd, sd_noise_scheduler,
                                tiny_empty_prompt, tiny_unet, tiny_vae)
from ldpm.models.mrcontrolnet import MRControlNet, training_loss
from ldpm.models.swinir import build_swinir, sketcher
from ldpm.physics import data_consistency, fft2, undersample
from ldpm.sampling.dual_stage import (dual_stage_sample, eq12_update, guidance_step, guidance_step_size,
                                      kspace_loss, latent_dc, plain_spaced_ddpm, posterior_mean, predict_z0,
                                      spaced_timesteps)

torch.set_num_threads(2)


def _phantom(b=2, h=32, w=32, seed=0) -> torch.Tensor:
    """Smooth non-negative images in [0, 1]: blurred noise, so they look like images, not white noise."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.rand(b, 1, h + 6, w + 6, generator=g), 7, stride=1)
    x = x - x.amin(dim=(-2, -1), keepdim=True)
    return x / x.amax(dim=(-2, -1), keepdim=True)


def _mask(b=2, w=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(b, 1, 1, w, generator=g) < 0.3).float()
    m[..., w // 2 - 2: w // 2 + 2] = 1  # fully sampled centre
    return m


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    unet, vae = tiny_unet(), tiny_vae(latent_factor=4)
    return SimpleNamespace(unet=unet.eval(), vae=vae.eval(), prompt=tiny_empty_prompt(unet))


# ------------------------------------------------------------------------------------------------ eqs. 2–3
def test_dc_restores_measured_lines_and_keeps_the_rest():
    x, mask = _phantom(), _mask()
    k_u, _ = undersample(x, mask)
    r = torch.rand_like(x)  # stands for R(x_u)
    k_out = fft2(data_consistency(r, k_u, mask))
    assert torch.allclose(k_out * mask, k_u, atol=1e-5)
    assert torch.allclose(k_out * (1 - mask), fft2(r) * (1 - mask), atol=1e-5)
    assert not torch.allclose(k_out * mask, fft2(r) * mask, atol=1e-3)


def test_sketcher_is_magnitude_of_dc_of_repair_output():
    x, mask = _phantom(h=36, w=40), _mask(w=40)  # not a multiple of the window: SwinIR pads
    k_u, x_u = undersample(x, mask)
    torch.manual_seed(0)
    net = build_swinir("tiny")
    with torch.no_grad():
        c = sketcher(Measurement(k_u, mask, x_u), net)
        assert c.shape == x.shape and (c >= 0).all()
        torch.testing.assert_close(c, data_consistency(net(x_u), k_u, mask).abs())
        # a perfect repair model gives back the ground truth: DC of x with its own k-space is x
        torch.testing.assert_close(sketcher(Measurement(k_u, mask, x_u), lambda _: x), x, atol=1e-5, rtol=0)
        # global residual: with a zero last conv, SwinIR is the identity
        torch.nn.init.zeros_(net.conv_last.weight), torch.nn.init.zeros_(net.conv_last.bias)
        torch.testing.assert_close(net(x_u), x_u)


# ------------------------------------------------------------------------------------------------ eqs. 6–7
def test_controlnet_at_init_leaves_the_frozen_unet_unchanged(tiny):
    model = MRControlNet(tiny.unet)
    c = model.control.conv_in.weight
    assert c.shape[1] == 8 and torch.count_nonzero(c[:, 4:]) == 0
    torch.testing.assert_close(c[:, :4], tiny.unet.conv_in.weight, rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.unet.parameters())
    assert all(p.requires_grad for p in model.control.parameters())
    g = torch.Generator().manual_seed(1)
    z_t, c_lat = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        ref = tiny.unet(z_t, t, encoder_hidden_states=tiny.prompt.expand(2, -1, -1)).sample
        torch.testing.assert_close(model(z_t, t, c_lat, tiny.prompt), ref, atol=1e-6, rtol=0)
        # the residuals really reach the U-Net: once the zero convs are non-zero, ε changes with c_latent
        for blk in [*model.control.controlnet_down_blocks, model.control.controlnet_mid_block]:
            torch.nn.init.normal_(blk.weight, std=0.1)
        torch.nn.init.normal_(model.control.conv_in.weight[:, 4:], std=0.1)
        e1, e2 = model(z_t, t, c_lat, tiny.prompt), model(z_t, t, -c_lat, tiny.prompt)
    assert (e1 - ref).abs().max() > 1e-3 and (e1 - e2).abs().max() > 1e-4


def test_eq6_forward_noising_matches_hand_computation():
    sched = sd_noise_scheduler()
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    abar = torch.tensor(np.cumprod(1 - betas))
    g = torch.Generator().manual_seed(2)
    z, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 417, 999])
    hand = abar[t].sqrt().view(-1, 1, 1, 1) * z + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(sched.add_noise(z, eps, t), hand.float(), atol=1e-5, rtol=0)


def test_eq7_loss_is_the_mse_of_the_noise_prediction(tiny):
    model, sched = MRControlNet(tiny.unet), sd_noise_scheduler()
    g = torch.Generator().manual_seed(3)
    z0, c_lat, eps = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([5, 800])
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
    with torch.no_grad():
        hand = ((eps - model(z_t, t, c_lat, tiny.prompt)) ** 2).mean()
        loss = training_loss(model, z0, c_lat, tiny.prompt, sched, t=t, noise=eps)
    torch.testing.assert_close(loss, hand, atol=1e-6, rtol=1e-5)
    # random t / ε path: gradients reach the control branch only
    loss = training_loss(model, z0, c_lat, tiny.prompt, sched, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.control.conv_in.weight.grad is not None
    assert all(p.grad is None for p in model.unet.parameters())


# --------------------------------------------------------------------------------------------- eqs. 8–12
def test_spaced_schedule_is_the_respaced_chain():
    s = spaced_timesteps(1000, 10)
    assert s.timesteps.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    abar = sd_noise_scheduler().alphas_cumprod.double()
    torch.testing.assert_close(s.alphas_cumprod, abar[s.timesteps])
    # the spaced betas compose back to ᾱ
    torch.testing.assert_close(torch.cumprod((1 - s.betas).flip(0), 0).flip(0), s.alphas_cumprod)


@pytest.mark.parametrize("step_form", ["posterior", "eq12"])
def test_sampler_without_dc_and_guidance_is_plain_spaced_ddpm(tiny, step_form):
    abar = sd_noise_scheduler().alphas_cumprod

    def eps_fn(z, t):
        # the exact ε-predictor for N(0, I) latents plus a small random-U-Net term (so it is not linear): keeps the
        # samples O(1), so atol 1e-5 is a float32-level check (a bare random U-Net drives latents to ~70)
        a = abar[t].view(-1, 1, 1, 1)
        unet_eps = tiny.unet(z, t, encoder_hidden_states=tiny.prompt.expand(z.shape[0], -1, -1)).sample
        return (1 - a).sqrt() * z + 0.1 * unet_eps

    shape = (2, 4, 8, 8)
    ref = plain_spaced_ddpm(eps_fn, shape, num_steps=12, generator=torch.Generator().manual_seed(7))
    out = dual_stage_sample(eps_fn, shape, num_steps=12, use_dc=False, use_guidance=False, step_form=step_form,
                            generator=torch.Generator().manual_seed(7), progress=False)
    torch.testing.assert_close(out.latent, ref, atol=1e-5, rtol=0)
    assert out.image is None
    other = plain_spaced_ddpm(eps_fn, shape, num_steps=12, generator=torch.Generator().manual_seed(8))
    assert (other - ref).abs().max() > 1e-2  # the comparison is sensitive to the noise draws


def test_eq11_guidance_step_is_a_gradient_step_on_eq10(tiny):
    """ẑ0' = ẑ0 − step·∇δ: the step's change along a random direction v equals −step·(δ(z+hv) − δ(z−hv))/2h, a
    central difference computed without autograd; and δ "mean" is δ "sum" over the number of sampled entries."""
    x, mask = _phantom(), _mask()
    k_u, _ = undersample(x, mask)
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    v = torch.randn(z0.shape, generator=torch.Generator().manual_seed(5))
    h, step = 1e-2, 0.7
    for norm in ("sum", "mean"):
        z1, _ = guidance_step(z0, Measurement(k_u, mask), tiny.vae, step, norm)
        with torch.no_grad():
            d_plus = kspace_loss(decode(tiny.vae, z0 + h * v), Measurement(k_u, mask), norm)
            d_minus = kspace_loss(decode(tiny.vae, z0 - h * v), Measurement(k_u, mask), norm)
        directional = (d_plus - d_minus) / (2 * h)  # per image: <∇δ, v>
        moved = ((z1 - z0) * v).flatten(1).sum(1)
        torch.testing.assert_close(moved, -step * directional, rtol=2e-2, atol=1e-4)
    n_sampled = mask.expand_as(x).flatten(1).sum(1)
    with torch.no_grad():
        xd = decode(tiny.vae, z0)
    torch.testing.assert_close(kspace_loss(xd, Measurement(k_u, mask), "sum") / n_sampled, kspace_loss(xd, Measurement(k_u, mask), "mean"))


def test_eq12_passes_a_dc_correction_whole_and_the_posterior_form_a_fraction():
    """A DC replacement ẑ0 → ẑ0 + Δ moves z_{t−1} by √ᾱ_{t−1}·Δ under eq. 12 and by c1·Δ = √ᾱ_{t−1} β_t/(1−ᾱ_t)·Δ
    under DiffBIR's posterior mean. Without a correction both give the same step (hand-computed coefficients)."""
    s = spaced_timesteps(1000, 20)
    i = 5  # a step inside the DC stage (t > 200)
    a, a_prev, beta, var = (float(v[i]) for v in (s.alphas_cumprod, s.alphas_cumprod_prev, s.betas,
                                                  s.posterior_variance))
    assert int(s.timesteps[i]) > 200
    g = torch.Generator().manual_seed(0)
    z0, eps, delta = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    z_t = a ** 0.5 * z0 + (1 - a) ** 0.5 * eps
    assert predict_z0(z_t, eps, a).sub(z0).abs().max() < 1e-5  # eq. 8 inverts eq. 6
    torch.testing.assert_close(eq12_update(z0, eps, a_prev, var), posterior_mean(z0, z_t, a, a_prev, beta))
    moved_eq12 = eq12_update(z0 + delta, eps, a_prev, var) - eq12_update(z0, eps, a_prev, var)
    moved_post = posterior_mean(z0 + delta, z_t, a, a_prev, beta) - posterior_mean(z0, z_t, a, a_prev, beta)
    torch.testing.assert_close(moved_eq12, a_prev ** 0.5 * delta)
    torch.testing.assert_close(moved_post, a_prev ** 0.5 * beta / (1 - a) * delta)
    assert beta / (1 - a) < 0.5  # the posterior form keeps only part of a DC correction (0.34 at this step)


def test_guidance_scale_conventions():
    """DiffBIR's convention: 3000·g on a mean loss, ×4 for its [−1, 1] range (its cond_fn); literal: g as printed."""
    assert guidance_step_size(0.1, "diffbir") == (pytest.approx(1200.0), "mean")
    assert guidance_step_size(0.1, "literal", "sum") == (0.1, "sum")
    with pytest.raises(ValueError, match="guidance_norm: mean"):
        guidance_step_size(0.1, "diffbir", "sum")
    with pytest.raises(ValueError, match="guidance_convention"):
        guidance_step_size(0.1, "other")


class _PixelShuffleVAE(torch.nn.Module):
    """An exactly invertible stand-in VAE with AutoencoderKL's interface: the latent is the 2×2 pixel-unshuffle of
    the image (4 channels), so E(D(z)) = z and latent DC equals pixel DC (no VAE reconstruction error).
    A random-init AutoencoderKL would not do: its reconstruction error swamps the DC effect."""

    config = SimpleNamespace(scaling_factor=1.0)

    def encode(self, x3):
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: F.pixel_unshuffle(x3[:, :1], 2)))

    def decode(self, z):
        return SimpleNamespace(sample=F.pixel_shuffle(z, 2).expand(-1, 3, -1, -1))


def test_latent_dc_moves_the_decoded_estimate_towards_the_measurements():
    vae = _PixelShuffleVAE()
    x, mask = _phantom(), _mask()
    k_u, _ = undersample(x, mask)
    estimate = (x + 0.3 * _phantom(seed=5)).clamp(0, 1)  # a wrong but plausible ẑ0
    z0 = encode(vae, estimate)
    torch.testing.assert_close(decode(vae, z0), estimate)  # the stand-in is exact
    before = kspace_loss(decode(vae, z0), Measurement(k_u, mask), "sum")
    after = kspace_loss(decode(vae, latent_dc(z0, Measurement(k_u, mask), vae)), Measurement(k_u, mask), "sum")
    # the magnitude of eq. 9 makes it not exact, but far closer than before
    assert (after < 0.1 * before).all(), (before, after)


def _centred_fft(x):
    """fastMRI's centred orthonormal FFT, written with torch.fft directly (not through ldpm.physics)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


def _centred_ifft(k):
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


def _toy_eps(z, t):
    """A deterministic, non-linear ε-predictor: enough to make every step's ẑ0 different."""
    return 0.3 * torch.tanh(z) + 1e-4 * t.view(-1, 1, 1, 1).float()


@pytest.mark.parametrize("step_form", ["eq12", "posterior"])
def test_sampler_with_dc_and_guidance_is_the_hand_written_loop(step_form):
    """The whole Dual-Stage Sampler with both stages on, against a loop written here from the paper's equations
    with its own FFT, DC, guidance gradient and coefficients (numpy from SD's ᾱ): eq. 9 replaces ẑ0 for t > p,
    eq. 11's correction Δ = −s∇δ reaches z_{t−1} whole for t ≤ p, and U is eq. 12 or the posterior mean."""
    vae = _PixelShuffleVAE()  # exact: E(D(z)) = z, D(z) = (pixel_shuffle(z) + 1) / 2 (the [−1, 1] convention)
    x, mask = _phantom(b=2, h=16, w=16), _mask(b=2, w=16)
    k_u = _centred_fft(x.to(torch.complex64)) * mask
    steps, p, g = 6, 400, 0.01
    out = dual_stage_sample(_toy_eps, (2, 4, 8, 8), Measurement(k_u, mask), vae=vae, num_steps=steps, p=p, guidance_scale=g,
                            step_form=step_form, generator=torch.Generator().manual_seed(3), progress=False)

    abar = sd_noise_scheduler().alphas_cumprod.double().numpy()
    ts = [999, 799, 599, 400, 200, 0]  # 6 evenly spaced steps of 0..999, both ends included
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 8, 8, generator=gen)
    for i, t in enumerate(ts):
        a = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
        beta = 1 - a / a_prev
        var = beta * (1 - a_prev) / (1 - a)
        eps = _toy_eps(z, torch.full((2,), t))
        z0 = (z - np.sqrt(1 - a) * eps) / np.sqrt(a)
        correction = 0.0
        if t > p:  # eq. 9: decode, restore the measured lines, magnitude, encode
            image = (F.pixel_shuffle(z0, 2) + 1) / 2
            z0 = F.pixel_unshuffle(_centred_ifft(_centred_fft(image) * (1 - mask) + k_u).abs() * 2 - 1, 2)
        else:  # eqs. 10–11, DiffBIR's scale: 3000·4·g on the mean over sampled entries
            zg = z0.clone().requires_grad_(True)
            residual = ((_centred_fft((F.pixel_shuffle(zg, 2) + 1) / 2) - k_u) * mask).abs().pow(2)
            delta = residual.sum((1, 2, 3)) / mask.expand_as(residual).sum((1, 2, 3))
            (grad,) = torch.autograd.grad(delta.sum(), zg)
            correction = -3000 * 4 * g * grad
        if step_form == "eq12":
            z = np.sqrt(a_prev) * z0 + np.sqrt(max(1 - a_prev - var, 0.0)) * eps
        else:
            z = np.sqrt(a_prev) * beta / (1 - a) * z0 + np.sqrt(1 - beta) * (1 - a_prev) / (1 - a) * z
        z = z + correction
        if i + 1 < len(ts):
            z = z + np.sqrt(var) * torch.randn(z.shape, generator=gen)
    torch.testing.assert_close(out.latent, z.float(), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("p", [0, 400, 999])
def test_dc_runs_above_p_and_guidance_at_or_below_it_never_both(monkeypatch, p):
    """A spy on the two stages: which timesteps reach latent DC (eq. 9) and which the guidance step (eq. 11)."""
    import ldpm.sampling.dual_stage as dss

    log = []
    real_dc, real_guidance = dss.latent_dc, dss.guidance_step

    def eps_fn(z, t):
        log.append(["t", int(t[0])])
        return _toy_eps(z, t)

    monkeypatch.setattr(dss, "latent_dc", lambda *a, **k: log.append(["dc"]) or real_dc(*a, **k))
    monkeypatch.setattr(dss, "guidance_step", lambda *a, **k: log.append(["guidance"]) or real_guidance(*a, **k))
    vae, x, mask = _PixelShuffleVAE(), _phantom(b=1, h=16, w=16), _mask(b=1, w=16)
    k_u, _ = undersample(x, mask)
    dss.dual_stage_sample(eps_fn, (1, 4, 8, 8), Measurement(k_u, mask), vae=vae, num_steps=6, p=p,
                          generator=torch.Generator().manual_seed(0), progress=False)
    stages = {}  # t -> the stages that ran in its step
    for entry in log:
        if entry[0] == "t":
            current = stages.setdefault(entry[1], [])
        else:
            current.append(entry[0])
    assert list(stages) == [999, 799, 599, 400, 200, 0]
    assert stages == {t: ["dc"] if t > p else ["guidance"] for t in stages}


def test_diffbir_convention_is_diffbirs_step_at_full_sampling():
    """Parseval: with every k-space line sampled, δ (mean over entries) is the image MSE on [0, 1]. DiffBIR's
    MSEGuidance differentiates the MSE of the [−1, 1] RGB decode against the target, ×3000·g. Our step in the
    diffbir convention must be that step (a VAE whose decode has three equal channels, so RGB is exact)."""
    vae = _PixelShuffleVAE()
    y = _phantom(b=2, h=16, w=16, seed=1)
    full = torch.ones(2, 1, 1, 16)
    k_full, _ = undersample(y, full)
    z0 = encode(vae, _phantom(b=2, h=16, w=16, seed=2))
    g = 0.1
    ours, _ = guidance_step(z0, Measurement(k_full, full), vae, *guidance_step_size(g, "diffbir"))
    z = z0.clone().requires_grad_(True)
    pred_rgb = vae.decode(z / vae.config.scaling_factor).sample  # DiffBIR decodes to [−1, 1] RGB
    target_rgb = (y * 2 - 1).expand(-1, 3, -1, -1)
    (grad,) = torch.autograd.grad((pred_rgb - target_rgb).pow(2).mean((1, 2, 3)).sum(), z)
    torch.testing.assert_close(ours, z0 - 3000 * g * grad, rtol=1e-4, atol=1e-5)


def test_guidance_runs_in_fp32_under_bf16_autocast(tiny):
    """The reconstruct stage samples under bf16 autocast on CUDA; the guidance gradient must not (CPU autocast
    stands in: it lowers the decoder's convolutions to bf16 the same way)."""
    x, mask = _phantom(), _mask()
    k_u, _ = undersample(x, mask)
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    reference, _ = guidance_step(z0, Measurement(k_u, mask), tiny.vae, 50.0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert decode(tiny.vae, z0).dtype == torch.bfloat16  # autocast does reach the decoder
        guided, _ = guidance_step(z0, Measurement(k_u, mask), tiny.vae, 50.0)
    torch.testing.assert_close(guided, reference, rtol=1e-5, atol=1e-6)


def test_dual_stage_runs_both_stages(tiny):
    x, mask = _phantom(), _mask()
    k_u, _ = undersample(x, mask)
    calls = []

    def eps_fn(z, t):
        calls.append(int(t[0]))
        return tiny.unet(z, t, encoder_hidden_states=tiny.prompt.expand(z.shape[0], -1, -1)).sample

    out = dual_stage_sample(eps_fn, (2, 4, 8, 8), Measurement(k_u, mask), vae=tiny.vae, num_steps=4, p=500,
                            generator=torch.Generator().manual_seed(0), progress=False)
    plain = dual_stage_sample(eps_fn, (2, 4, 8, 8), Measurement(k_u, mask), vae=tiny.vae, num_steps=4, use_dc=False,
                              use_guidance=False, generator=torch.Generator().manual_seed(0), progress=False)
    assert calls == [999, 666, 333, 0] * 2
    assert out.image.shape == (2, 1, 32, 32) and 0 <= out.image.min() and out.image.max() <= 1
    assert torch.isfinite(out.latent).all() and (out.latent - plain.latent).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------------ eq. 5 etc.
def test_kl_loss_matches_closed_form():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    params = torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(6))
    mu, logvar = params[:, :4], params[:, 4:]
    hand = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(kl_loss(DiagonalGaussianDistribution(params)), hand)


def test_charbonnier_closed_form():
    a = torch.zeros(4, 1, 5, 5)
    assert float(charbonnier(a, a + 0.2, eps=1e-3)) == pytest.approx((0.2 ** 2 + 1e-6) ** 0.5, rel=1e-6)
    assert float(charbonnier(a, a, eps=1e-3)) == pytest.approx(1e-3, rel=1e-6)


def test_vgg_weights_are_required_and_checked(tmp_path):
    with pytest.raises(LdpmError, match="vgg.pth"):
        VGGPerceptual(tmp_path / "vgg.pth")
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(LdpmError, match="bad.pth"):
        VGGPerceptual(tmp_path / "bad.pth", layers=(3,))
    # a well-formed local state dict loads (random values here; the pipeline points at ImageNet weights)
    from torchvision.models import vgg as tv_vgg
    feats = tv_vgg.make_layers(tv_vgg.cfgs["D"])[:4]
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, tmp_path / "ok.pth")
    vgg = VGGPerceptual(tmp_path / "ok.pth", layers=(3,))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert float(vgg(x, x)) == 0 and float(vgg(x, -x)) > 0


def test_mrvae_loss_terms(tiny):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    g = torch.Generator().manual_seed(9)
    x, x_rec = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    post = DiagonalGaussianDistribution(torch.randn(2, 8, 8, 8, generator=g))
    disc = PatchDiscriminator(n_layers=2, ndf=8).eval()
    total, terms = mrvae_loss(x, x_rec, post, disc, None, mu=1.0, nu=0.2, omega=1e-6, lam=0.65)
    with torch.no_grad():
        # eq. 5 with SD/taming's normalisation: per-image sums of |x̂ − x| and of the closed-form KL, batch mean
        mean, logvar = post.mean, post.logvar
        kl_per_image = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum((1, 2, 3))
        hand = ((x_rec - x).abs().sum((1, 2, 3)) + 1e-6 * kl_per_image).mean() - 0.65 * disc(x_rec).mean()
    assert terms["perceptual_on"] == 0.0 and terms["perceptual"] == 0.0
    torch.testing.assert_close(total.detach(), hand)
    assert disc(x).shape[1] == 1 and disc(x).shape[-1] < 32
    torch.testing.assert_close(d_hinge_loss(torch.full((4,), 2.0), torch.full((4,), -0.5)), torch.tensor(0.25))


def test_sd_loader_names_missing_paths(tmp_path):
    with pytest.raises(LdpmError, match="nowhere"):
        load_sd(tmp_path / "nowhere")
    (tmp_path / "sd" / "vae").mkdir(parents=True)
    with pytest.raises(LdpmError, match="vae/config.json"):
        load_sd(tmp_path / "sd")
    with pytest.raises(LdpmError, match="empty_prompt.safetensors|tokenizer"):
        empty_prompt_embedding(tmp_path / "sd")
