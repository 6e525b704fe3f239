"""PSNR / SSIM / NMSE with the fastMRI protocol: per volume, data_range = ground-truth volume maximum.

The table value of a method is the mean over volumes (`fastmri.evaluate` semantics). A per-slice CSV is written
too (slice metrics still use the volume maximum as data range), for slice-level figures and statistics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from fastmri import evaluate as fm
from skimage.metrics import structural_similarity

from ldpm import LdpmError
from ldpm.io import open_h5, read_images, read_table, write_table

log = logging.getLogger("ldpm.metrics")

VOLUME_COLUMNS = ["volume", "dataset", "acquisition", "field_strength", "system_model", "patient_id"]


def volume_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    maxval = float(gt.max())
    return {"psnr": float(fm.psnr(gt, pred, maxval)), "ssim": float(fm.ssim(gt, pred, maxval).item()),
            "nmse": float(fm.nmse(gt, pred))}


def slice_metrics(gt: np.ndarray, pred: np.ndarray, maxval: float) -> dict[str, float]:
    mse = float(np.mean((gt - pred) ** 2))
    return {"psnr": float(10 * np.log10(maxval**2 / mse)) if mse > 0 else float("inf"),
            "ssim": float(structural_similarity(gt, pred, data_range=maxval)),
            "nmse": float(np.sum((gt - pred) ** 2) / np.sum(gt**2))}


def read_recon(path: str | Path) -> np.ndarray:
    with open_h5(path) as fh:
        if "recon" not in fh:
            raise LdpmError(f"{path}: no 'recon' dataset; rerun the reconstruct rule that writes it")
        return fh["recon"][()]


def evaluate(test_h5: str | Path, test_csv: str | Path, recon_h5: str | Path, method: str, acceleration: int,
             out_volumes: str | Path, out_slices: str | Path) -> pd.DataFrame:
    gt_all, pred_all = read_images(test_h5), read_recon(recon_h5)
    if gt_all.shape != pred_all.shape:
        raise LdpmError(f"{recon_h5}: shape {pred_all.shape} != test set {gt_all.shape}; rerun its reconstruct rule")
    meta = read_table(test_csv)
    volume_rows, slice_rows = [], []
    for volume, rows in meta.groupby("volume", sort=False):
        idx = rows.index.to_numpy()
        gt, pred = gt_all[idx], pred_all[idx]
        volume_rows.append({**rows.iloc[0][VOLUME_COLUMNS].to_dict(), "n_slices": len(idx),
                            **volume_metrics(gt, pred)})
        maxval = float(gt.max())
        for i, sid in zip(range(len(idx)), rows["slice_id"]):
            slice_rows.append({"slice_id": sid, "volume": volume, **slice_metrics(gt[i], pred[i], maxval)})
    tag = {"method": method, "acceleration": acceleration}
    volumes = pd.DataFrame(volume_rows).assign(**tag)
    write_table(volumes, out_volumes)
    write_table(pd.DataFrame(slice_rows).assign(**tag), out_slices)
    log.info("%s AF%d: PSNR %.3f SSIM %.4f NMSE %.4f over %d volumes", method, acceleration,
             volumes.psnr.mean(), volumes.ssim.mean(), volumes.nmse.mean(), len(volumes))
    return volumes
