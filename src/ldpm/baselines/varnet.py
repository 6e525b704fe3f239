"""E2E-VarNet baseline (fastMRI's `VarNet`) on our single-coil measurement.

Single coil: VarNet sees k_u as a 1-coil stack (B, 1, H, W, 2). Its sensitivity network still runs, but
`SensitivityModel` divides the estimated map by the root-sum-of-squares over coils, so with one coil the map is
S = s/|s|: unit magnitude, phase only. The cascades then refine e^{-iφ}·image and map back with e^{iφ}; the output,
RSS over coils of |F^-1(k)|, is just the magnitude (B, H, W). Nothing needs patching.

Scale: VarNet is equivariant to a positive scaling of k-space (NormUnet standardises its input and undoes it, the
sensitivity maps are scale-free, soft DC is linear), so weights trained on raw fastMRI k-space (~1e-4) run on our
images normalised to max 1 unchanged.

Official weights (the paper's U-Net and E2E-VarNet rows) are fastMRI's multi-coil brain models, loaded by
`ldpm.weights.load_official_varnet` / `load_official_unet` and run here on our single-coil simulation (VarNet with a
1-coil stack, U-Net on the zero-filled magnitude), but they were trained on multi-coil data: expect a domain gap,
not the leaderboard numbers.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch
from fastmri.losses import SSIMLoss
from fastmri.models import VarNet

from ldpm.baselines import reconstruction_metrics, training_images, undersampled_batch, validation_set
from ldpm.physics import Measurement
from ldpm.train import (VAL_SLICES, curve_path, data_parallel, epoch_trainer, optimizer_step, resolve_device,
                        seed_everything)
from ldpm.weights import load_official_varnet, load_weights, save_weights

log = logging.getLogger("ldpm.varnet")


def build_varnet(hp: dict) -> VarNet:
    return VarNet(num_cascades=hp["num_cascades"], chans=hp["chans"], pools=hp["pools"],
                  sens_chans=hp["sens_chans"], sens_pools=hp["sens_pools"])


def varnet_reconstruct(model: VarNet, k_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) complex k_u and (B,1,1,W) 0/1 mask → (B,1,H,W) magnitude (RSS over VarNet's coils), at the
    k-space's width: callers bring it to the image grid (`Measurement.to_grid`, fastMRI's centre crop).

    The coil axis is our channel axis: 1 coil under the magnitude measurement, the raw coils under multicoil.
    num_low_frequencies=None lets VarNet find the fully sampled centre from the mask (the symmetric run of ones around
    the centre), as fastMRI does when the count is not given. A batch whose slices have fewer coils than it holds
    (`ldpm.data.coils` zero-pads them at the end) runs per coil count on each slice's own coils: VarNet's NormUnet
    divides by every coil's std, which an all-zero coil makes 0.
    """
    coils = (k_u.flatten(2).abs().amax(-1) > 0).sum(1).clamp_min(1)  # coils holding data, per slice
    if bool((coils == k_u.shape[1]).all()):
        masked_kspace = torch.view_as_real(k_u.to(torch.complex64)).contiguous()  # (B, C, H, W, 2)
        return model(masked_kspace, mask[..., None].bool(), None)[:, None]
    out = torch.empty(k_u.shape[0], 1, *k_u.shape[-2:], device=k_u.device)
    for n in coils.unique().tolist():
        rows = coils == n
        out[rows] = varnet_reconstruct(model, k_u[rows, :n], mask[rows]).to(out.dtype)
    return out


def varnet_image(model: VarNet, meas: Measurement) -> torch.Tensor:
    """VarNet's magnitude of a measurement on its image grid (fastMRI's centre crop of the raw-width output)."""
    return meas.to_grid(varnet_reconstruct(model, meas.k_u, meas.mask))


def train_varnet(inputs: dict[str, str], out: str | Path, ckpt_dir: str | Path, hp: dict, masks_cfg: dict,
                 seed: int, device: str = "auto", *, val_slices: int = VAL_SLICES) -> list[dict]:
    """SSIM loss as fastMRI's VarNetModule (data_range = volume max, which is 1 after our per-volume normalisation);
    Adam; fresh masks per step drawn from the training AF/centre-fraction pairs, as for the U-Net. Validation (with
    inputs["val"]): PSNR / SSIM on fixed validation slices and masks."""
    seed_everything(seed)
    dev = resolve_device(device)
    images = training_images(inputs, masks_cfg)  # read per batch
    model = build_varnet(hp).to(dev)
    loss_fn = SSIMLoss().to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    sampler, trainer = epoch_trainer({"varnet": model}, {"adam": optimizer}, ckpt_dir, images, hp, seed, "varnet")
    data_range = torch.ones(1, device=dev)  # broadcast over the batch
    by_input = masks_cfg.get("normalise", "gt_max") == "input"
    net = data_parallel(model)

    def step(i: int) -> dict[str, float]:
        x, meas = undersampled_batch(images, sampler, i, seed, masks_cfg, dev)
        # data.normalise "input" rescales each slice, so its volume max is no longer 1: the slice's max stands in
        target_range = x.amax(dim=(1, 2, 3)) if by_input else data_range
        loss = loss_fn(varnet_image(net, meas), x, data_range=target_range)
        optimizer_step(optimizer, loss)
        return {"ssim_loss": loss.item()}

    val = validation_set(inputs, val_slices, seed, masks_cfg, dev, "varnet")
    validate = val and (lambda: reconstruction_metrics(partial(varnet_image, model), val, hp["batch_size"]))
    history = trainer.run(step, validate, curve_path(out))
    save_weights(model, out, metadata={"method": "varnet", "seed": str(seed)})
    return history


# ---------------------------------------------------------------- reconstructors

def reconstructor(weights: dict[str, Path], hp: dict, device: torch.device):
    """E2E-VarNet: hp['official'] true → official fastMRI .pt state dict, else our trained safetensors."""
    if hp.get("official", False):
        model = load_official_varnet(weights["model"], hp)
    else:
        model = load_weights(build_varnet(hp), weights["model"])
    model = model.to(device).eval()
    return partial(varnet_image, model)
