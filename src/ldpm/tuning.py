"""Settings a method leaves open at a given scale, chosen on the VALIDATION split (never on test), one way for every
method: LDPM's sampler (`ldpm.method.tuning`) and the λ of the compressed-sensing rows (`ldpm.baselines.cs`).

`grid_search` runs the method on `n_slices` evenly spaced validation slices, each with a mask seeded by (seed,
"val", AF, slice id) from the test-mask recipe, for every combination of the grid, and keeps the combination with
the highest mean PSNR of the output as the reconstruct stage leaves it: the measurement scaled by data.normalise and
the output clipped by `ldpm.physics.clip_output` (`ldpm.evaluate.protocol.psnr`, data range = the slice's volume
maximum, as in the fastMRI protocol; ties go to the first in grid order). Every combination starts from the same
seed, so the rows differ only by their settings. Outputs: a JSON with the chosen values (read by the method's
reconstructor) and a CSV with every row, so a reader sees how flat or sharp the choice was.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ldpm.data.masks import sample_mask
from ldpm.evaluate import protocol
from ldpm.io import atomic_output, read_images, read_table, stable_seed, write_table
from ldpm.physics import Measurement, check_measurement, clip_output, measure, scaled_method

log = logging.getLogger("ldpm.tuning")


def validation_batch(val_h5: str | Path, val_csv: str | Path, n_slices: int, acceleration: int,
                     center_fraction: float, seed: int, mask_type: str = "random", widths: np.ndarray | None = None,
                     ) -> tuple[torch.Tensor, list[torch.Tensor], np.ndarray, np.ndarray]:
    """(x (N,1,H,W), masks (one (1,1,W) tensor per slice), volume maxima (N,), rows (N,) of the validation file) of
    `n_slices` evenly spaced validation slices. With `widths` (each row's raw k-space width, the multicoil
    measurement) the masks are drawn at those widths."""
    images, meta = read_images(val_h5), read_table(val_csv)
    pick = np.unique(np.linspace(0, len(images) - 1, min(n_slices, len(images))).round().astype(int))
    vmax = meta.assign(m=images.reshape(len(images), -1).max(1)).groupby("volume")["m"].transform("max").to_numpy()
    width = [images.shape[-1]] * len(images) if widths is None else widths
    masks = [torch.from_numpy(sample_mask(int(width[i]), acceleration, center_fraction,
                                          stable_seed(seed, "val", acceleration, meta.slice_id[i]), mask_type)
                              ).float()[None, None] for i in pick]
    return torch.from_numpy(images[pick])[:, None], masks, vmax[pick], pick


def coil_slices(measurement: str, slices_csv, index_csvs: list, crop_size: int):
    """The raw coil slices of a split file under the multicoil measurement (`ldpm.data.coils.CoilSlices`); None
    under magnitude."""
    check_measurement(measurement)
    if measurement == "magnitude":
        return None
    if crop_size is None:
        raise ValueError("the multicoil measurement needs the image grid's crop_size")
    from ldpm.data.coils import CoilSlices

    return CoilSlices(slices_csv, list(index_csvs), crop_size)


def measurements(x: torch.Tensor, masks: list[torch.Tensor], rows: np.ndarray, batch_size: int,
                 device: torch.device, coils=None) -> list[Measurement]:
    """The measurements of images x (rows `rows`, ascending, of the split file) under masks, in batches whose
    outputs concatenate back to x's order: magnitude (`measure`), or with `coils` (`coil_slices`) multicoil, their
    raw coil k-space under masks at the raw widths, in batches of one raw width (`CoilSlices.runs`). Made once, so
    every grid point sees the same ones (and multicoil maps are estimated once)."""
    if coils is None:
        return [measure(x[start:start + batch_size].to(device), torch.stack(masks[start:start + batch_size]).to(device))
                for start in range(0, len(x), batch_size)]
    return [coils.measurement(run, torch.stack([masks[i] for i in np.searchsorted(rows, run)]).to(device))
            for run in coils.runs(batch_size, rows)]


def grid_search(build: Callable[[dict], Callable], grid: dict[str, list], val_h5: str | Path, val_csv: str | Path,
                n_slices: int, acceleration: int, center_fraction: float, seed: int, out_json: str | Path,
                out_csv: str | Path, *, device: torch.device, fixed: dict | None = None, batch_size: int = 16,
                mask_type: str = "random", normalise: str = "gt_max", what: str = "settings",
                measurement: str = "magnitude", index_csvs: list = (), crop_size: int | None = None) -> dict:
    """Score `build(settings)` (a reconstructor, `ldpm.stages` contract) for every combination of `grid` on the
    validation slices under `measurement` (multicoil: the slices' raw coil k-space through `index_csvs` at the
    `crop_size` grid, as `ldpm.reconstruct`); write the choice (`out_json`, with `fixed`: the settings not tuned)
    and every row (`out_csv`). Returns the JSON record."""
    if not grid or not all(grid.values()):
        raise ValueError(f"the tuning grid of {what} is empty: nothing to choose")
    coils = coil_slices(measurement, val_csv, index_csvs, crop_size)
    x, masks, vmax, rows_picked = validation_batch(val_h5, val_csv, n_slices, acceleration, center_fraction, seed,
                                                   mask_type, None if coils is None else coils.widths)
    batches = measurements(x, masks, rows_picked, batch_size, device, coils)
    keys = sorted(grid)
    rows = []
    for values in tqdm(list(itertools.product(*(grid[k] for k in keys))), desc=f"tune {what}", disable=None):
        settings = dict(zip(keys, values))
        torch.manual_seed(seed)
        run = scaled_method(build(settings), normalise)
        out = []
        with torch.no_grad():
            for meas in batches:
                out.append(clip_output(run(meas).float())[:, 0].cpu().numpy())
        psnr = np.array([protocol.psnr(g, p, m) for g, p, m in zip(x[:, 0].numpy(), np.concatenate(out), vmax)])
        rows.append(settings | {"psnr": float(psnr.mean()), "psnr_sd": float(psnr.std())})
        log.info("validation %s: PSNR %.3f dB over %d slices", settings, rows[-1]["psnr"], len(x))
    table = pd.DataFrame(rows)
    best = table.loc[table["psnr"].idxmax()]
    chosen = {k: (best[k].item() if hasattr(best[k], "item") else best[k]) for k in keys}
    log.info("chosen on validation (AF %d): %s, PSNR %.3f dB", acceleration, chosen, best["psnr"])
    write_table(table.assign(chosen=table.index == best.name), out_csv)
    record = {"chosen": chosen, "objective": "mean PSNR over validation slices", "acceleration": acceleration,
              "val_slices": len(x), "fixed": fixed or {}}
    with atomic_output(out_json) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    return record


def chosen(tuned_json: str | Path) -> dict:
    """The settings a `grid_search` chose."""
    return json.loads(Path(tuned_json).read_text())["chosen"]
