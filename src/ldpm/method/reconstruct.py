"""LDPM reconstruction (eqs. 1–12), the ablations of Table II and two variants beyond the paper, as reconstructor
factories (`ldpm.stages`).

Per batch: c = |DC(R(x_u), k_u, M)| (SkM, eqs. 2–3) → c_latent = E(c) → Dual-Stage Sampler from z_T ~ N(0, I) with
ε_θ(z_t, p, t, c_latent) of the MRCN (eqs. 8–12) → x̂ = D(z_0). The ablations change exactly one part:
- ldpm_no_mrvae: the natural-image VAE (SD-VAE at paper scale) instead of MR-VAE for E and D everywhere (condition,
  latent DC, guidance, final decode);
- ldpm_no_skm: no repair net, c = |DC(x_u, k_u, M)| (the zero-filled image with its measured lines restored);
- ldpm_no_dss: the same spaced DDPM chain without latent DC and k-space guidance (plain ancestral sampling).
Which MRCN each ablation runs is the rules' choice (`ldpm.ablations_mode`): the full model's ("swap") or one
retrained with the ablated part ("retrain"); it arrives as weights["mrcn"].

Variants beyond the paper (extra rows, never replacing LDPM's): ldpm_final_dc ends with an image-domain hard DC,
x̂ = |DC(D(z_0), k_u, M)|; ldpm_mean_k averages the images of K posterior samples (ldpm.posterior_samples).

Sampler settings are ldpm.sampler, with the values chosen on the validation split (`ldpm.method.tuning`) laid over
them when the rules pass that file as weights["sampler_tuned"].
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ldpm.io import stable_seed
from ldpm.method.components import load_mrcn, load_sketcher, load_vae, pretrained_vae, repair
from ldpm.models.latent import encode
from ldpm.models.swinir import sketcher
from ldpm.physics import Measurement
from ldpm.sampling.dual_stage import dual_stage_sample
from ldpm.tuning import chosen

log = logging.getLogger("ldpm.method")

def sampler_settings(weights: dict[str, Path], hp: dict) -> dict:
    """ldpm.sampler, overlaid with the validation-chosen values when a tuning file is among the weights."""
    settings = dict(hp["sampler"])
    if "sampler_tuned" in weights:
        settings |= chosen(weights["sampler_tuned"])
    return settings


@dataclass
class LdpmModels:
    """The networks one LDPM variant samples with: MRCN ε_θ with its prompt embedding, the VAE, the repair net."""
    mrcn: nn.Module
    prompt: torch.Tensor
    vae: nn.Module
    net: nn.Module | Callable


def load_ldpm_models(weights: dict[str, Path], hp: dict, device: torch.device, *, mr_vae: bool = True,
                     use_skm: bool = True) -> LdpmModels:
    model, prompt = load_mrcn(weights, hp)
    vae = load_vae(weights["mrvae"], hp) if mr_vae else pretrained_vae(weights, hp)
    # w/o SkM: R is the identity, so c = |DC(x_u, k_u, M)|
    net = partial(repair, load_sketcher(weights["sketcher"], hp).to(device)) if use_skm else nn.Identity()
    return LdpmModels(model.to(device), prompt.to(device), vae.to(device).eval(), net)


def build_ldpm(weights: dict[str, Path], hp: dict, device: torch.device, *, mr_vae: bool = True,
               use_skm: bool = True, use_dss: bool = True, n_samples: int = 1, final_dc: bool = False,
               sampler: dict | None = None, models: LdpmModels | None = None):
    """A reconstructor; `run(measurement, condition="real", use_guidance=None, sketch=None)` also serves the
    diagnostics: condition "zero" samples with c_latent = 0 and "shuffle" with another image's, use_guidance=False
    switches the t ≤ p stage off, and `sketch` is a c = |DC(R(x_u))| computed already (the paper SwinIR's forward
    pass costs more than the rest of a 2-step LDPM sample). `models`: networks loaded already (`load_ldpm_models`
    with the same mr_vae / use_skm), shared between reconstructors instead of another copy in memory."""
    # Drawn first from the global RNG that `ldpm.reconstruct` seeds with the pipeline seed: batch i then samples
    # with its own generator seeded by (base, i), whatever else uses the global RNG.
    base_seed = int(torch.randint(2**31, ()))
    models = models or load_ldpm_models(weights, hp, device, mr_vae=mr_vae, use_skm=use_skm)
    model, prompt, vae, net = models.mrcn, models.prompt, models.vae, models.net
    s = sampler or sampler_settings(weights, hp)
    batches = itertools.count()

    def run(meas: Measurement, condition: str = "real", use_guidance: bool | None = None,
            sketch: torch.Tensor | None = None) -> torch.Tensor:
        c_latent = encode(vae, sketcher(meas, net) if sketch is None else sketch)
        if condition == "zero":
            c_latent = torch.zeros_like(c_latent)
        elif condition == "shuffle":  # each image gets the next image's condition
            c_latent = c_latent.roll(1, 0)
        generator = torch.Generator().manual_seed(stable_seed(base_seed, next(batches)))
        images = []
        for _ in range(n_samples):
            z_T = torch.randn(c_latent.shape, generator=generator).to(device)
            result = dual_stage_sample(lambda z, t: model(z, t, c_latent, prompt), z_T, meas, vae=vae,
                                       num_steps=s["num_steps"], p=s["p"], guidance_scale=s["guidance_scale"],
                                       guidance_convention=s["guidance_convention"],
                                       guidance_norm=s["guidance_norm"], step_form=s["step_form"], use_dc=use_dss,
                                       use_guidance=use_dss if use_guidance is None else use_guidance,
                                       generator=generator, progress=False)
            images.append(result.image)
        image = torch.stack(images).mean(0)
        return meas.data_consistency(image).abs() if final_dc else image

    log.info("LDPM (%s VAE, %s, %s%s%s): %s", "MR" if mr_vae else "natural-image", "SkM" if use_skm else "no SkM",
             "DSS" if use_dss else "plain DDPM", f", mean of {n_samples} samples" if n_samples > 1 else "",
             ", final hard DC" if final_dc else "", s)
    return run


def ldpm(weights, hp, device):
    return build_ldpm(weights, hp, device)


def ldpm_no_mrvae(weights, hp, device):
    return build_ldpm(weights, hp, device, mr_vae=False)


def ldpm_no_skm(weights, hp, device):
    return build_ldpm(weights, hp, device, use_skm=False)


def ldpm_no_dss(weights, hp, device):
    return build_ldpm(weights, hp, device, use_dss=False)


def ldpm_final_dc(weights, hp, device):
    return build_ldpm(weights, hp, device, final_dc=True)


def ldpm_mean_k(weights, hp, device):
    return build_ldpm(weights, hp, device, n_samples=hp["posterior_samples"])
