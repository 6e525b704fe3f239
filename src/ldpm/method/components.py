"""Where each LDPM stage starts from, and how every saved LDPM weight file is loaded back. One code path, two scales:

- paper scale (`ldpm.sd_dir` set): the VAE and denoiser U-Net are stable-diffusion-2-1-base's, read from that local
  folder (never downloaded);
- embedded scale (`ldpm.sd_dir: null`): SD's role is played by a tiny AutoencoderKL and UNet2DConditionModel that
  are pretrained here on random patches of scikit-image's bundled photographs ("natural-image VAE / U-Net"), so
  "fine-tune a natural-image prior on MRI" keeps its meaning at CPU size.

Weight files are safetensors; a VAE file records its latent `scaling_factor` in the metadata (it is a config value
of AutoencoderKL, not a tensor).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open

from ldpm import LdpmError
from ldpm.baselines.unet import standardise
from ldpm.method import check_sd_dir
from ldpm.models.latent import empty_prompt_embedding, load_sd_model, tiny_empty_prompt, tiny_unet, tiny_vae
from ldpm.models.mrcontrolnet import MRControlNet, build_control_branch
from ldpm.models.swinir import SwinIR, build_swinir
from ldpm.weights import load_weights

log = logging.getLogger("ldpm.method")


# ------------------------------------------------------------------------------------ natural-image patches
def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample image as a 2D float array in [0, 1] (colour → luminance)."""
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.util import img_as_float32

    loader = getattr(skimage.data, name, None)
    if loader is None or name.startswith("_"):
        raise LdpmError(f"config key ldpm.natural.images: '{name}' is not a skimage.data image "
                        "(e.g. astronaut, camera, coffee, chelsea, rocket)")
    try:
        image = loader()
    except (ModuleNotFoundError, OSError) as exc:  # images that skimage would have to download (pooch)
        raise LdpmError(f"config key ldpm.natural.images: '{name}' is not bundled with scikit-image here "
                        f"({str(exc).splitlines()[0][:80]}); drop it from the list") from None
    if image.ndim == 3 and image.shape[-1] == 4:
        image = rgba2rgb(image)
    if image.ndim == 3:
        image = rgb2gray(image)
    return img_as_float32(image)


def natural_patches(names: list[str], n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 1, size, size) grey patches in [0, 1]: random square crops of random scale (from `size` px up to the whole
    short side, log-uniform, so patches range from fine texture to whole scenes), resized with antialiasing and
    randomly flipped. A pure function of its arguments, so the VAE and U-Net stages see the same bank."""
    photos = [torch.from_numpy(load_photo(name)) for name in names]
    rng = np.random.default_rng([seed, 7])
    out = torch.empty(n, 1, size, size)
    for i in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape
        side = int(round(math.exp(rng.uniform(math.log(size), math.log(min(h, w))))))
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = photo[y:y + side, x:x + side][None, None]
        patch = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i] = patch[0].flip(-1) if rng.random() < 0.5 else patch[0]
    return out.clamp(0, 1)


# --------------------------------------------------------------------------------------------- weight files
def sd_dir_of(hp: dict) -> Path | None:
    """The configured SD folder (paper scale) or None (embedded scale)."""
    return check_sd_dir(hp.get("sd_dir"))


def weights_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as fh:
        return fh.metadata() or {}


def vae_metadata(vae: AutoencoderKL, **extra: object) -> dict[str, str]:
    return {"scaling_factor": repr(float(vae.config.scaling_factor)), **{k: str(v) for k, v in extra.items()}}


def load_vae(path: str | Path, hp: dict) -> AutoencoderKL:
    """A VAE saved by an LDPM stage (natural-image VAE or MR-VAE), frozen, in eval mode."""
    sd_dir = sd_dir_of(hp)
    vae = load_weights(load_sd_model(sd_dir, "vae") if sd_dir else tiny_vae(**hp["vae"]), path)
    meta = weights_metadata(path)
    if "scaling_factor" not in meta:
        raise LdpmError(f"{path}: no scaling_factor in its metadata; it was not written by an LDPM VAE stage, "
                        "delete it and rerun that stage")
    vae.register_to_config(scaling_factor=float(meta["scaling_factor"]))
    return vae.eval().requires_grad_(False)


def pretrained_vae(weights: dict, hp: dict) -> AutoencoderKL:
    """The natural-image VAE ("SD-VAE"): SD's from `sd_dir`, else the tiny one pretrained on photos."""
    sd_dir = sd_dir_of(hp)
    if sd_dir:
        return load_sd_model(sd_dir, "vae")
    if "natural_vae" not in weights:
        raise LdpmError("no natural-image VAE: set config key ldpm.sd_dir, or run the ldpm_natural_vae stage")
    return load_vae(weights["natural_vae"], hp)


def pretrained_unet(weights: dict, hp: dict) -> tuple[UNet2DConditionModel, torch.Tensor]:
    """The frozen denoiser and its empty-prompt embedding: SD's, else the tiny U-Net pretrained on photo latents."""
    sd_dir = sd_dir_of(hp)
    if sd_dir:
        return load_sd_model(sd_dir, "unet"), empty_prompt_embedding(sd_dir)
    if "natural_unet" not in weights:
        raise LdpmError("no pretrained denoiser: set config key ldpm.sd_dir, or run the ldpm_natural_unet stage")
    unet = load_weights(tiny_unet(**hp["unet"]), weights["natural_unet"])
    return unet, tiny_empty_prompt(unet)


def load_mrcn(weights: dict, hp: dict) -> tuple[MRControlNet, torch.Tensor]:
    """Frozen pretrained U-Net + the trained control branch (the only part the MRCN stage saves)."""
    unet, prompt = pretrained_unet(weights, hp)
    control = load_weights(build_control_branch(unet), weights["mrcn"])
    return MRControlNet(unet, control).eval().requires_grad_(False), prompt


def build_sketcher(hp: dict) -> SwinIR:
    return build_swinir(hp["sketcher"]["arch"])


def repair(net: SwinIR, x_u: torch.Tensor) -> torch.Tensor:
    """SkM's R(x_u), applied to the per-image standardised input and mapped back (the fastMRI U-Net's input
    normalisation; measured here: 19.9 instead of 19.0 dB after 200 steps of the tiny SwinIR)."""
    z, mean, std = standardise(x_u)
    return net(z) * std + mean


def load_sketcher(path: str | Path, hp: dict) -> SwinIR:
    return load_weights(build_sketcher(hp), path).eval().requires_grad_(False)
