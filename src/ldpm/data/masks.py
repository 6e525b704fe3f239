"""Cartesian 1D undersampling masks, fixed per test slice (or volume: masks.per), fresh in training: `random`
(fastMRI's RandomMaskFunc, the paper's masks) or `equispaced` (fastMRI's EquispacedMaskFractionFunc, the masks
fastMRI's official weights were trained with). Every saved test set of masks comes with a CSV of its real
acceleration (width / sampled lines), since a random mask's real AF differs slice by slice from the nominal one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import pandas as pd
from fastmri.data.subsample import EquispacedMaskFractionFunc, RandomMaskFunc

from ldpm import LdpmError
from ldpm.io import atomic_output, stable_seed, write_table

MASK_FUNCS = {"random": RandomMaskFunc, "equispaced": EquispacedMaskFractionFunc}
# The test set's real acceleration (all columns / all sampled columns) may differ from the nominal AF by this much
# before the masks stage refuses: beyond it the mask function cannot reach the AF at this width.
MAX_AF_DEVIATION = 0.15

# fastMRI's pairing of acceleration and centre fraction; config may override per AF.
DEFAULT_CENTER_FRACTIONS = {4: 0.08, 8: 0.04}


def check_acceleration(af: float, key: str = "masks.accelerations") -> None:
    if not af > 1:
        raise LdpmError(f"config key {key}: acceleration {af} must be > 1 (e.g. 4 or 8)")


def sample_mask(width: int, acceleration: int, center_fraction: float, seed: int | tuple[int, ...],
                mask_type: str = "random") -> np.ndarray:
    """One (width,) boolean mask over phase-encode columns, drawn by fastMRI's mask function of `mask_type`."""
    check_acceleration(acceleration)
    if mask_type not in MASK_FUNCS:
        raise LdpmError(f"config key masks.types: unknown mask type '{mask_type}'; known: {', '.join(MASK_FUNCS)}")
    mask_func = MASK_FUNCS[mask_type](center_fractions=[center_fraction], accelerations=[acceleration])
    mask, _ = mask_func((1, width, 1), seed=seed)
    return mask.reshape(width).numpy().astype(bool)


def batch_masks(rng: np.random.Generator, batch: int, width: int, accelerations: list[int],
                center_fractions: list[float], mask_type: str = "random") -> torch.Tensor:
    """Fresh training masks (B, 1, 1, W): each draws an (AF, cf) pair and a seed from `rng`."""
    masks = []
    for _ in range(batch):
        i = int(rng.integers(len(accelerations)))
        masks.append(sample_mask(width, accelerations[i], center_fractions[i], int(rng.integers(2**31)), mask_type))
    return torch.from_numpy(np.stack(masks)).float()[:, None, None, :]


MASKS_PER = ("slice", "volume")  # config masks.per


def test_mask(key: str, width: int, acceleration: int, center_fraction: float, seed: int,
               mask_type: str = "random") -> np.ndarray:
    """The fixed test mask of a slice or volume `key` at `width` columns, seeded by (seed, AF, key)."""
    return sample_mask(width, acceleration, center_fraction, stable_seed(seed, acceleration, key), mask_type)


def make_test_masks(slice_ids: list[str], width: int, acceleration: int, center_fraction: float, seed: int,
                    out: str | Path, mask_type: str = "random", out_csv: str | Path | None = None,
                    per: str = "slice", volumes: list[str] | None = None) -> np.ndarray:
    """Fixed masks for the test set, saved with the slice ids. per "slice": slice i gets the mask seeded by (seed,
    AF, slice id); per "volume" (fastMRI's test protocol): every slice of volume v (`volumes[i]`, the test CSV's
    `volume` column) gets the one mask seeded by (seed, AF, v). `out_csv` gets each mask's real acceleration; a test
    set whose overall real AF is more than MAX_AF_DEVIATION from the nominal one is refused before anything is
    written."""
    if per not in MASKS_PER:
        raise LdpmError(f"config key masks.per: unknown value '{per}'; use {' or '.join(MASKS_PER)}")
    if per == "volume" and (volumes is None or len(volumes) != len(slice_ids)):
        raise LdpmError("masks.per volume needs the volume of every test slice (the test CSV's volume column)")
    keys = slice_ids if per == "slice" else volumes
    drawn = {key: test_mask(key, width, acceleration, center_fraction, seed, mask_type)
             for key in dict.fromkeys(keys)}  # one draw per distinct key, in order
    masks = np.stack([drawn[key] for key in keys])
    real = real_accelerations(masks, slice_ids, acceleration, mask_type)
    overall = masks.size / masks.sum()
    if abs(overall / acceleration - 1) > MAX_AF_DEVIATION:
        raise LdpmError(f"config key masks.accelerations: {mask_type} masks of width {width} reach AF {overall:.2f}, "
                        f"not {acceleration}; use another AF, centre fraction or mask type")
    with atomic_output(out) as tmp:
        with open(tmp, "wb") as fh:  # np.savez on a path would append '.npz' to the temporary name
            np.savez(fh, masks=masks, slice_id=np.asarray(slice_ids), acceleration=acceleration,
                     center_fraction=center_fraction, mask_type=mask_type)
    if out_csv is not None:
        write_table(real, out_csv)
    return masks


def real_accelerations(masks: np.ndarray, slice_ids: list[str], acceleration: int, mask_type: str) -> pd.DataFrame:
    """One row per test mask: nominal and real AF (width / sampled columns) and the number of sampled columns."""
    sampled = masks.sum(axis=1)
    return pd.DataFrame({"slice_id": slice_ids, "mask_type": mask_type, "nominal_af": acceleration,
                         "sampled_columns": sampled, "real_af": masks.shape[1] / sampled})


def load_test_masks(path: str | Path, slice_ids: list[str]) -> torch.Tensor:
    """(N, 1, 1, W) float masks, checked to belong to exactly these test slices in this order."""
    if not Path(path).exists():
        raise LdpmError(f"{path}: mask file not found; run the masks rule first")
    with np.load(path, allow_pickle=False) as data:
        if list(data["slice_id"]) != list(slice_ids):
            raise LdpmError(f"{path}: masks were made for a different test set; delete it and rerun")
        return torch.from_numpy(data["masks"]).float()[:, None, None, :]


def raw_width_masks(path: str | Path, rows: pd.DataFrame, widths: np.ndarray, seed: int,
                    per: str = "slice") -> list[torch.Tensor]:
    """The test masks of `rows` (the test CSV: slice_id, volume) at each slice's raw k-space width (the multicoil
    measurement, `ldpm.data.coils`), as (1, 1, W_raw) tensors: the saved mask where the widths agree, else the same
    key's mask drawn at the raw width (`test_mask`: the seed, AF, centre fraction and mask type of the saved file;
    `per` the config key masks.per it was made with), as fastMRI draws a mask at each file's own width."""
    stored = list(load_test_masks(path, rows["slice_id"].tolist()))
    off = [i for i, w in enumerate(widths) if w != stored[i].shape[-1]]
    if off:
        with np.load(path, allow_pickle=False) as data:
            af, cf, kind = int(data["acceleration"]), float(data["center_fraction"]), str(data["mask_type"])
        keys = rows["slice_id" if per == "slice" else "volume"].astype(str).tolist()
        for i in off:
            stored[i] = torch.from_numpy(test_mask(keys[i], int(widths[i]), af, cf, seed, kind)).float()[None, None]
    return stored
