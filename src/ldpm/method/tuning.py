"""Sampler settings the paper leaves open at a given scale, chosen on the VALIDATION split (never on test).

The paper fixes g = 0.1, p = 200 and eq. 12 for SD-2-1-base at 320²; a tiny latent model at 64² need not share
them. `tune_sampler` runs LDPM (the full model, with its trained weights) for every combination of ldpm.tuning.grid
on ldpm.tuning.val_slices validation slices, the same way every tuned method is tuned (`ldpm.tuning.grid_search`:
masks, objective, outputs).
"""

from __future__ import annotations

from pathlib import Path

from ldpm.method.reconstruct import build_ldpm, sampler_settings
from ldpm.train import resolve_device
from ldpm.tuning import grid_search


def tune_sampler(val_h5: str | Path, val_csv: str | Path, weights: dict[str, str], hp: dict, acceleration: int,
                 center_fraction: float, seed: int, out_json: str | Path, out_csv: str | Path,
                 device: str = "auto", batch_size: int = 16, mask_type: str = "random",
                 normalise: str = "gt_max", **protocol) -> dict:
    """LDPM's sampler grid (ldpm.tuning.grid) on validation; `protocol`: the measurement (`ldpm.tuning.grid_search`)."""
    dev = resolve_device(device)
    weights = {k: Path(v) for k, v in weights.items() if k != "sampler_tuned"}
    base = sampler_settings(weights, hp)
    return grid_search(lambda settings: build_ldpm(weights, hp, dev, sampler=base | settings), hp["tuning"]["grid"],
                       val_h5, val_csv, hp["tuning"]["val_slices"], acceleration, center_fraction, seed, out_json,
                       out_csv, device=dev, fixed={k: v for k, v in base.items() if k not in hp["tuning"]["grid"]},
                       batch_size=batch_size, mask_type=mask_type, normalise=normalise, what="ldpm.tuning.grid",
                       **protocol)
