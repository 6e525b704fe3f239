"""Paper-size shapes with random weights on CPU (no training, no downloads): SD-2-1-base VAE + U-Net +
IRControlNet on a 320² image (40² latent), and SwinIR's "paper" config. Run with `pytest -m slow`."""

from __future__ import annotations

import time

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ldpm.models.latent import SD21_BASE_UNET_CONFIG, SD21_BASE_VAE_CONFIG, decode, encode
from ldpm.models.mrcontrolnet import MRControlNet
from ldpm.models.swinir import build_swinir

pytestmark = pytest.mark.slow


def _n_params(m: torch.nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def test_sd21_base_vae_unet_controlnet_at_320():
    torch.manual_seed(0)
    t0 = time.perf_counter()
    vae = AutoencoderKL(**SD21_BASE_VAE_CONFIG).eval()
    model = MRControlNet(UNet2DConditionModel(**SD21_BASE_UNET_CONFIG)).eval()
    t_build = time.perf_counter() - t0
    # SD-2-1-base sizes: U-Net ≈ 866M, VAE ≈ 84M parameters; the control branch is the encoder + middle copy
    assert 860 < _n_params(model.unet) < 870 and 80 < _n_params(vae) < 90
    assert 330 < _n_params(model.control) < 380
    assert model.control.conv_in.weight.shape[1] == 8
    x = torch.rand(1, 1, 320, 320)
    prompt = torch.zeros(1, 77, 1024)  # stands for the empty-prompt CLIP embedding (shape only)
    with torch.no_grad():
        t0 = time.perf_counter()
        z = encode(vae, x)
        assert z.shape == (1, 4, 40, 40)
        eps = model(torch.randn_like(z), torch.tensor([500]), z, prompt)
        assert eps.shape == z.shape and torch.isfinite(eps).all()
        x_rec = decode(vae, z)
        assert x_rec.shape == x.shape
    print(f"\nSD-2-1-base build {t_build:.1f}s, encode + MRCN forward + decode {time.perf_counter() - t0:.1f}s")


def test_swinir_paper_config_at_320():
    torch.manual_seed(0)
    net = build_swinir("paper").eval()
    assert 11 < _n_params(net) < 12.5  # SwinIR/SwinMR size (embed 180, 6×6 blocks) ≈ 11.5M
    x = torch.rand(1, 1, 320, 320)
    with torch.no_grad():
        t0 = time.perf_counter()
        y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    print(f"\nSwinIR paper config, one 320² forward: {time.perf_counter() - t0:.1f}s")
