"""LDPM reconstruction (eqs. 1–12) and the ablations of Table II, as reconstructor factories (`ldpm.stages`).

Per batch: c = |DC(R(x_u), k_u, M)| (SkM, eqs. 2–3) → c_latent = E(c) → Dual-Stage Sampler from z_T ~ N(0, I) with
ε_θ(z_t, p, t, c_latent) of the MRCN (eqs. 8–12) → x̂ = D(z_0). The ablations change exactly one part:
- ldpm_no_mrvae: the natural-image VAE (SD-VAE at paper scale) instead of MR-VAE for E and D everywhere (condition,
  latent DC, guidance, final decode). The MRCN is the one trained on MR-VAE latents: the paper's ablation swaps the
  VAE of the full model, and training a second MRCN per ablation is not described.
- ldpm_no_skm: no repair net, c = |DC(x_u, k_u, M)| (the zero-filled image with its measured lines restored).
- ldpm_no_dss: the same spaced DDPM chain without latent DC and k-space guidance (plain ancestral sampling).
"""

from __future__ import annotations

import itertools
import logging
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ldpm.io import stable_seed
from ldpm.method.components import load_mrcn, load_sketcher, load_vae, pretrained_vae, repair
from ldpm.models.latent import encode
from ldpm.models.swinir import sketcher
from ldpm.sampling.dual_stage import dual_stage_sample

log = logging.getLogger("ldpm.method")


def build_ldpm(weights: dict[str, Path], hp: dict, device: torch.device, *, mr_vae: bool = True,
               use_skm: bool = True, use_dss: bool = True):
    # Drawn first from the global RNG that `ldpm.reconstruct` seeds with the pipeline seed: batch i then samples
    # with its own generator seeded by (base, i), whatever else uses the global RNG.
    base_seed = int(torch.randint(2**31, ()))
    model, prompt = load_mrcn(weights, hp)
    model, prompt = model.to(device), prompt.to(device)
    vae = (load_vae(weights["mrvae"], hp) if mr_vae else pretrained_vae(weights, hp)).to(device).eval()
    # w/o SkM: R is the identity, so c = |DC(x_u, k_u, M)|
    net = partial(repair, load_sketcher(weights["sketcher"], hp).to(device)) if use_skm else nn.Identity()
    s = hp["sampler"]
    batches = itertools.count()

    def run(x_u: torch.Tensor, k_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        c_latent = encode(vae, sketcher(x_u, k_u, mask, net))
        generator = torch.Generator().manual_seed(stable_seed(base_seed, next(batches)))
        z_T = torch.randn(c_latent.shape, generator=generator).to(device)
        result = dual_stage_sample(lambda z, t: model(z, t, c_latent, prompt), z_T, k_u, mask, vae=vae,
                                   num_steps=s["num_steps"], p=s["p"], guidance_scale=s["guidance_scale"],
                                   guidance_norm=s["guidance_norm"], step_form=s["step_form"], use_dc=use_dss,
                                   use_guidance=use_dss, generator=generator, progress=False)
        return result.image

    log.info("LDPM (%s VAE, %s, %s): %d sampler steps, p=%d, g=%s (%s), step form %s",
             "MR" if mr_vae else "natural-image", "SkM" if use_skm else "no SkM",
             "DSS" if use_dss else "plain DDPM", s["num_steps"], s["p"], s["guidance_scale"], s["guidance_norm"],
             s["step_form"])
    return run


def ldpm(weights, hp, device):
    return build_ldpm(weights, hp, device)


def ldpm_no_mrvae(weights, hp, device):
    return build_ldpm(weights, hp, device, mr_vae=False)


def ldpm_no_skm(weights, hp, device):
    return build_ldpm(weights, hp, device, use_skm=False)


def ldpm_no_dss(weights, hp, device):
    return build_ldpm(weights, hp, device, use_dss=False)
