"""fastMRI U-Net baseline (image-domain de-aliasing of the zero-filled magnitude), trained with our own loop.

Normalisation follows fastMRI's UnetDataTransform: the zero-filled input is standardised by its own mean and
std (clamped to ±6), the network predicts the standardised target, and the output is de-standardised.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from fastmri.models import Unet

from ldpm.baselines import reconstruction_metrics, training_images, undersampled_batch, validation_set
from ldpm.train import (VAL_SLICES, curve_path, data_parallel, epoch_trainer, optimizer_step, resolve_device,
                        seed_everything)
from ldpm.weights import load_official_unet, load_weights, save_weights

log = logging.getLogger("ldpm.unet")


def build_unet(hp: dict) -> Unet:
    return Unet(in_chans=1, out_chans=1, chans=hp["chans"], num_pool_layers=hp["num_pool_layers"],
                drop_prob=hp.get("drop_prob", 0.0))


def standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
    return ((x - mean) / std).clamp(-6, 6), mean, std


def unet_reconstruct(model: Unet, x_u: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) zero-filled magnitude → (B,1,H,W) reconstruction in the input's units."""
    z, mean, std = standardise(x_u)
    return model(z) * std + mean


def train_unet(inputs: dict[str, str], out: str | Path, ckpt_dir: str | Path, hp: dict, masks_cfg: dict,
               seed: int, device: str = "auto", *, val_slices: int = VAL_SLICES) -> list[dict]:
    """L1 loss on standardised images; fresh masks per step drawn from the training AF/centre-fraction pairs.
    Validation (with inputs["val"]): PSNR / SSIM of the reconstruction on fixed validation slices and masks."""
    seed_everything(seed)
    dev = resolve_device(device)
    images = training_images(inputs, masks_cfg)  # read per batch
    model = build_unet(hp).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    sampler, trainer = epoch_trainer({"unet": model}, {"adam": optimizer}, ckpt_dir, images, hp, seed, "unet")
    net = data_parallel(model)

    def step(i: int) -> dict[str, float]:
        x, meas = undersampled_batch(images, sampler, i, seed, masks_cfg, dev)
        z, mean, std = standardise(meas.x_u)
        loss = torch.nn.functional.l1_loss(net(z), ((x - mean) / std))
        optimizer_step(optimizer, loss)
        return {"l1": loss.item()}

    val = validation_set(inputs, val_slices, seed, masks_cfg, dev, "unet")
    validate = val and (lambda: reconstruction_metrics(lambda meas: unet_reconstruct(model, meas.x_u), val,
                                                       hp["batch_size"]))
    history = trainer.run(step, validate, curve_path(out))
    save_weights(model, out, metadata={"method": "unet", "seed": str(seed)})
    return history


def reconstructor(weights: dict[str, Path], hp: dict, device: torch.device):
    """Our trained U-Net (weights["model"], safetensors); hp["official"] → fastMRI's official brain state dict."""
    if hp.get("official", False):
        model = load_official_unet(weights["model"], hp)
    else:
        model = load_weights(build_unet(hp), weights["model"])
    model = model.to(device).eval()
    return lambda meas: unet_reconstruct(model, meas.x_u)
