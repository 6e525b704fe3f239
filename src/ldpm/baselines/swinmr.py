"""SwinMR, non-parallel-imaging version (Huang et al. 2022): the SwinIR body with a global residual de-aliases the
zero-filled magnitude. Same network as the Sketcher's repair model R (`ldpm.models.swinir`), without the DC: SwinMR
nPI has none.

Loss, as SwinMR's `MRI_SwinMR_NPI.total_loss`, with α = 15, β = 0.1, γ = 0.0025:
    α·C(x̂, x) + β·½[C(Re F x̂, Re F x) + C(Im F x̂, Im F x)] + γ·VGG(x̂, x),
C the Charbonnier mean √(d² + 1e-9). F is SwinMR's `fft_map`: `torch.fft.fftn` over every axis of the (B, 1, H, W)
batch, unnormalised and unshifted. Its k-space errors are ~√(B·H·W) times the image errors, so β = 0.1 only weighs
what it weighed in SwinMR's training when F is that same transform (an orthonormal F would make the term negligible).
VGG is SwinMR's perceptual loss: L1 between VGG19 conv features (layers 2, 7, 16, 25, 34, before their ReLU) with
weights 0.1, 0.1, 1, 1, 1, on ImageNet-normalised grey images. It needs a local VGG19 state dict (`vgg_weights`);
without one the term is off, logged, and recorded in the weights' metadata (never random VGG features).

Training pairs as SwinMR's: the image is undersampled at full size, then (optionally) the same random `patch_size`
patch is cut from target and zero-filled image and one of the 8 flips/rotations applied (`augment`); SwinMR uses
96 px patches, which is also what makes the paper-size network fit in GPU memory. Optimiser as SwinMR's: Adam
(lr 2e-4) with the learning rate halved at each of `lr_milestones` steps.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldpm import LdpmError
from ldpm.baselines import reconstruction_metrics, training_images, undersampled_batch, validation_set
from ldpm.losses import VGGPerceptual, charbonnier
from ldpm.models.swinir import SwinIR, build_swinir
from ldpm.train import (VAL_SLICES, curve_path, data_parallel, epoch_trainer, optimizer_step, resolve_device,
                        seed_everything, step_rng)
from ldpm.weights import load_weights, save_weights

log = logging.getLogger("ldpm.swinmr")

ARCH_KEYS = ("embed_dim", "depths", "num_heads", "window_size", "mlp_ratio")
CHARBONNIER_EPS = 1e-9 ** 0.5  # SwinMR adds 1e-9 under the root; ldpm.losses.charbonnier adds eps²
VGG_LAYERS = (2, 7, 16, 25, 34)  # torchvision vgg19.features indices: conv1_2, conv2_2, conv3_4, conv4_4, conv5_4
VGG_LAYER_WEIGHTS = (0.1, 0.1, 1.0, 1.0, 1.0)


def build_swinmr(hp: dict) -> SwinIR:
    return build_swinir({k: hp[k] for k in ARCH_KEYS}, in_chans=1, global_residual=True)


class SwinMRPerceptual(VGGPerceptual):
    """SwinMR's perceptual term on (B, 1, H, W) magnitudes in [0, 1], from a local VGG19 state dict."""

    def __init__(self, weights_path: str | Path):
        super().__init__(weights_path, arch="vgg19", layers=VGG_LAYERS)
        for m in self.features:  # keep the pre-ReLU conv outputs: torchvision's in-place ReLUs would overwrite them
            if isinstance(m, nn.ReLU):
                m.inplace = False

    def forward(self, x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        def feats(im: torch.Tensor) -> list[torch.Tensor]:
            return self._feats((2 * im - 1).expand(-1, 3, -1, -1))  # VGGPerceptual takes RGB in [-1, 1]

        return sum(w * F.l1_loss(a, b) for w, a, b in zip(VGG_LAYER_WEIGHTS, feats(x_rec), feats(x)))


def fft_map(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SwinMR's k-space for the loss: unnormalised FFT over all axes (batch included), real and imaginary parts."""
    k = torch.fft.fftn(x)
    return k.real, k.imag


def swinmr_loss(x_rec: torch.Tensor, x: torch.Tensor, vgg: nn.Module | None = None, alpha: float = 15.0,
                beta: float = 0.1, gamma: float = 0.0025) -> tuple[torch.Tensor, dict[str, float]]:
    """(total, terms); with vgg=None the perceptual term is 0 and terms['perceptual_on'] = 0."""
    image = charbonnier(x_rec, x, CHARBONNIER_EPS)
    (rec_re, rec_im), (gt_re, gt_im) = fft_map(x_rec), fft_map(x)
    freq = (charbonnier(rec_re, gt_re, CHARBONNIER_EPS) + charbonnier(rec_im, gt_im, CHARBONNIER_EPS)) / 2
    perc = vgg(x_rec, x) if vgg is not None else x.new_zeros(())
    total = alpha * image + beta * freq + gamma * perc
    terms = {k: float(v.detach()) for k, v in (("image", image), ("freq", freq), ("perceptual", perc),
                                                ("total", total))}
    return total, terms | {"perceptual_on": float(vgg is not None)}


def patches(x: torch.Tensor, x_u: torch.Tensor, size: int | None, augment: bool,
            rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the same random size×size patch of target and input (size None: whole image), then, with
    `augment`, the same one of the 8 flips/rotations (SwinMR's `augment_img` modes)."""
    targets, inputs = [], []
    for a, b in zip(x, x_u):
        h, w = a.shape[-2:]
        if size is not None:
            i, j = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
            a, b = a[..., i:i + size, j:j + size], b[..., i:i + size, j:j + size]
        if augment:
            mode = int(rng.integers(8))
            a, b = (torch.rot90(t, mode % 4, dims=(-2, -1)) for t in (a, b))
            if mode >= 4:
                a, b = a.flip(-1), b.flip(-1)
        targets.append(a)
        inputs.append(b)
    return torch.stack(targets), torch.stack(inputs)


def lr_at(step: int, hp: dict) -> float:
    """MultiStepLR as a function of the step, so a resumed run needs no scheduler state."""
    return hp["lr"] * hp["lr_gamma"] ** sum(step >= m for m in hp["lr_milestones"])


def train_swinmr(inputs: dict[str, str], out: str | Path, ckpt_dir: str | Path, hp: dict, masks_cfg: dict,
                 seed: int, device: str = "auto", *, val_slices: int = VAL_SLICES) -> list[dict]:
    """SwinMR loss on x̂ = net(x_u) against x, fresh masks per step from the training AF/centre-fraction pairs.
    Validation (with inputs["val"]): PSNR / SSIM of net(x_u) on whole fixed validation slices and masks."""
    seed_everything(seed)
    dev = resolve_device(device)
    images = training_images(inputs, masks_cfg)  # read per batch
    if (hp["patch_size"] or 0) > min(images.shape[-2:]):
        raise LdpmError(f"config key swinmr.patch_size: {hp['patch_size']} is larger than the "
                        f"{images.shape[-1]} px training images; lower it or set it to null")
    model = build_swinmr(hp).to(dev)
    if hp["vgg_weights"]:
        vgg = SwinMRPerceptual(hp["vgg_weights"]).to(dev)
        perceptual = f"on (VGG19 from {hp['vgg_weights']})"
    else:
        vgg = None
        perceptual = "off (no swinmr.vgg_weights configured)"
    log.info("swinmr perceptual term: %s", perceptual)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    sampler, trainer = epoch_trainer({"swinmr": model}, {"adam": optimizer}, ckpt_dir, images, hp, seed, "swinmr")
    net = data_parallel(model)

    def step(i: int) -> dict[str, float]:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(i, hp)
        x, meas = undersampled_batch(images, sampler, i, seed, masks_cfg, dev)
        x_u = meas.x_u
        if hp["patch_size"] is not None or hp["augment"]:
            x, x_u = patches(x, x_u, hp["patch_size"], hp["augment"], step_rng(seed, 3, i))
        loss, terms = swinmr_loss(net(x_u), x, vgg, hp["alpha"], hp["beta"], hp["gamma"])
        optimizer_step(optimizer, loss)
        return terms

    val = validation_set(inputs, val_slices, seed, masks_cfg, dev, "swinmr")
    validate = val and (lambda: reconstruction_metrics(lambda meas: model(meas.x_u), val, max(8, hp["batch_size"])))
    history = trainer.run(step, validate, curve_path(out))
    save_weights(model, out, metadata={"method": "swinmr", "seed": str(seed), "perceptual": perceptual,
                                       "swinir": json.dumps({k: hp[k] for k in ARCH_KEYS}),
                                       "loss_weights": json.dumps({k: hp[k] for k in ("alpha", "beta", "gamma")})})
    return history


def reconstructor(weights: dict[str, Path], hp: dict, device: torch.device):
    """SwinMR: the trained network applied to the zero-filled magnitude (no data consistency, as SwinMR nPI)."""
    model = load_weights(build_swinmr(hp), weights["model"]).to(device).eval()
    return lambda meas: model(meas.x_u)
