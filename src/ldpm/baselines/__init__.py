"""Comparison methods of Table I (zero-filled, fastMRI U-Net, ...), each trained and run by the same loops."""

from __future__ import annotations

import torch

from ldpm.data.masks import batch_masks
from ldpm.physics import undersample
from ldpm.train import EpochSampler, shard, step_rng


def undersampled_batch(images: torch.Tensor, sampler: EpochSampler, step: int, seed: int, masks_cfg: dict,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training batch `step` as (x, mask, k_u, x_u), all (B, 1, ...) on `device`: the images of the sampler's batch
    and their measurement under fresh masks drawn from (seed, step), so a resumed run sees the same masks.
    Under torchrun this process's slice of that global batch (`ldpm.train.shard`)."""
    x = images[sampler.batch(step)][:, None].to(device)
    mask = batch_masks(step_rng(seed, 1, step), len(x), x.shape[-1], masks_cfg["accelerations"],
                       masks_cfg["center_fractions"]).to(device)
    k_u, x_u = undersample(x, mask)
    return shard(x, mask, k_u, x_u)
