"""Cartesian 1D random undersampling masks (fastMRI `RandomMaskFunc`), fixed per test slice, fresh in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from fastmri.data.subsample import RandomMaskFunc

from ldpm import LdpmError
from ldpm.io import atomic_output, stable_seed

# fastMRI's pairing of acceleration and centre fraction; config may override per AF.
DEFAULT_CENTER_FRACTIONS = {4: 0.08, 8: 0.04}


def check_acceleration(af: float, key: str = "masks.accelerations") -> None:
    if not af > 1:
        raise LdpmError(f"config key {key}: acceleration {af} must be > 1 (e.g. 4 or 8)")


def sample_mask(width: int, acceleration: int, center_fraction: float, seed: int | tuple[int, ...]) -> np.ndarray:
    """One (width,) boolean mask over phase-encode columns, drawn by fastMRI's RandomMaskFunc with `seed`."""
    check_acceleration(acceleration)
    mask_func = RandomMaskFunc(center_fractions=[center_fraction], accelerations=[acceleration])
    mask, _ = mask_func((1, width, 1), seed=seed)
    return mask.reshape(width).numpy().astype(bool)


def batch_masks(rng: np.random.Generator, batch: int, width: int, accelerations: list[int],
                center_fractions: list[float]) -> torch.Tensor:
    """Fresh training masks (B, 1, 1, W): each draws an (AF, cf) pair and a seed from `rng`."""
    masks = []
    for _ in range(batch):
        i = int(rng.integers(len(accelerations)))
        masks.append(sample_mask(width, accelerations[i], center_fractions[i], int(rng.integers(2**31))))
    return torch.from_numpy(np.stack(masks)).float()[:, None, None, :]


def make_test_masks(slice_ids: list[str], width: int, acceleration: int, center_fraction: float, seed: int,
                    out: str | Path) -> np.ndarray:
    """Fixed masks for the test set: slice i gets the mask seeded by (seed, AF, slice id), saved with the ids."""
    masks = np.stack([sample_mask(width, acceleration, center_fraction, stable_seed(seed, acceleration, sid))
                      for sid in slice_ids])
    with atomic_output(out) as tmp:
        with open(tmp, "wb") as fh:  # np.savez on a path would append '.npz' to the temporary name
            np.savez(fh, masks=masks, slice_id=np.asarray(slice_ids), acceleration=acceleration,
                     center_fraction=center_fraction)
    return masks


def load_test_masks(path: str | Path, slice_ids: list[str]) -> torch.Tensor:
    """(N, 1, 1, W) float masks, checked to belong to exactly these test slices in this order."""
    if not Path(path).exists():
        raise LdpmError(f"{path}: mask file not found; run the masks rule first")
    with np.load(path, allow_pickle=False) as data:
        if list(data["slice_id"]) != list(slice_ids):
            raise LdpmError(f"{path}: masks were made for a different test set; delete it and rerun")
        return torch.from_numpy(data["masks"]).float()[:, None, None, :]
