"""PSNR / SSIM / NMSE with the fastMRI protocol: per volume, data_range = ground-truth volume maximum.

PSNR is the pipeline's one function (`ldpm.evaluate.protocol.psnr`): the metrics, Figs 2–3, the sampler tuning and
training-time validation all call it, each with the data range it states.

The table value of a method is the mean over volumes (`fastmri.evaluate` semantics). A per-slice CSV is written
too (slice metrics still use the volume maximum as data range), for slice-level figures and statistics.

Two metrics beyond the paper, in the same CSVs:
- hfen: high-frequency error norm (Ravishankar & Bresler 2011), ‖LoG(pred) − LoG(gt)‖ / ‖LoG(gt)‖ with their
  15×15 Laplacian-of-Gaussian, σ = 1.5 (MATLAB fspecial('log', 15, 1.5), symmetric borders), per slice.
- kspace_residual: ‖(F(pred) − k_u)·M‖ / ‖k_u‖ on the sampled lines, k_u = F(gt)·M with the test mask the
  method saw: how far a reconstruction departs from the measurements it was given (0 = exact consistency).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastmri import evaluate as fm
from scipy import ndimage
from skimage.metrics import structural_similarity

from ldpm import LdpmError
from ldpm.data.masks import load_test_masks
from ldpm.evaluate import protocol
from ldpm.io import read_images, read_recon, read_table, write_table
from ldpm.physics import fft2, kspace_residual

log = logging.getLogger("ldpm.metrics")

VOLUME_COLUMNS = ["volume", "dataset", "acquisition", "field_strength", "system_model", "patient_id"]


def log_kernel(size: int = 15, sigma: float = 1.5) -> np.ndarray:
    """MATLAB fspecial('log', size, sigma): sampled LoG, Gaussian normalised to sum 1, then made zero-sum."""
    r = np.arange(size) - (size - 1) / 2
    rr = r[:, None] ** 2 + r[None, :] ** 2
    g = np.exp(-rr / (2 * sigma**2))
    g /= g.sum()
    h = g * (rr - 2 * sigma**2) / sigma**4
    return h - h.mean()


def _log_filter(images: np.ndarray, sigma: float) -> np.ndarray:
    kernel = log_kernel(15, sigma)
    return np.stack([ndimage.convolve(np.asarray(im, np.float64), kernel, mode="reflect") for im in images])


def hfen(gt: np.ndarray, pred: np.ndarray, sigma: float = 1.5) -> float:
    """‖LoG(pred) − LoG(gt)‖₂ / ‖LoG(gt)‖₂ over a slice (H, W) or a volume (S, H, W) of slices."""
    a = _log_filter(gt.reshape(-1, *gt.shape[-2:]), sigma)
    b = _log_filter(pred.reshape(-1, *pred.shape[-2:]), sigma)
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))


def kspace_residuals(gt: np.ndarray, pred: np.ndarray, masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: ‖(F(pred) − k_u)·M‖² and ‖k_u‖², with k_u = F(gt)·M (masks (S,1,1,W) as in load_test_masks)."""
    mask = masks[:, 0]
    k_u = fft2(torch.tensor(gt)) * mask
    residual = kspace_residual(torch.tensor(pred), k_u, mask)
    return residual.numpy().astype(np.float64), k_u.abs().pow(2).sum(dim=(-2, -1)).numpy().astype(np.float64)


def image_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """PSNR / SSIM / NMSE (fastMRI, data_range = volume max) and HFEN of one volume."""
    maxval = float(gt.max())
    return {"psnr": protocol.psnr(gt, pred, maxval), "ssim": float(fm.ssim(gt, pred, maxval).item()),
            "nmse": float(fm.nmse(gt, pred)), "hfen": hfen(gt, pred)}


def volume_metrics(gt: np.ndarray, pred: np.ndarray, masks: torch.Tensor) -> dict[str, float]:
    """image_metrics plus the k-space residual on the sampled lines of the test masks."""
    residual, energy = kspace_residuals(gt, pred, masks)
    return image_metrics(gt, pred) | {"kspace_residual": float(np.sqrt(residual.sum() / energy.sum()))}


def slice_metrics(gt: np.ndarray, pred: np.ndarray, maxval: float, residual: float, energy: float) -> dict[str, float]:
    return {"psnr": protocol.psnr(gt, pred, maxval),
            "ssim": float(structural_similarity(gt, pred, data_range=maxval)),
            "nmse": float(np.sum((gt - pred) ** 2) / np.sum(gt**2)), "hfen": hfen(gt, pred),
            "kspace_residual": float(np.sqrt(residual / energy))}


def evaluate(test_h5: str | Path, test_csv: str | Path, recon_h5: str | Path, masks_npz: str | Path, method: str,
             acceleration: int, out_volumes: str | Path, out_slices: str | Path,
             training_seed: int = 0, measurement: str = "magnitude") -> pd.DataFrame:
    gt_all, pred_all = read_images(test_h5), read_recon(recon_h5)
    if gt_all.shape != pred_all.shape:
        raise LdpmError(f"{recon_h5}: shape {pred_all.shape} != test set {gt_all.shape}; rerun its reconstruct rule")
    meta = read_table(test_csv)
    masks = load_test_masks(masks_npz, meta["slice_id"].tolist())
    volume_rows, slice_rows = [], []
    for volume, rows in meta.groupby("volume", sort=False):
        idx = np.array(rows.index)  # a writable copy: torch indexes masks with it
        gt, pred = gt_all[idx], pred_all[idx]
        volume_rows.append({**rows.iloc[0][VOLUME_COLUMNS].to_dict(), "n_slices": len(idx),
                            **volume_metrics(gt, pred, masks[idx])})
        maxval = float(gt.max())
        residual, energy = kspace_residuals(gt, pred, masks[idx])
        for i, sid in enumerate(rows["slice_id"]):
            slice_rows.append({"slice_id": sid, "volume": volume,
                               **slice_metrics(gt[i], pred[i], maxval, residual[i], energy[i])})
    tag = {"method": method, "acceleration": acceleration, "training_seed": training_seed, "measurement": measurement}
    volumes = pd.DataFrame(volume_rows).assign(**tag)
    write_table(volumes, out_volumes)
    write_table(pd.DataFrame(slice_rows).assign(**tag), out_slices)
    log.info("%s AF%d: PSNR %.3f SSIM %.4f NMSE %.4f HFEN %.4f k-residual %.4f over %d volumes", method,
             acceleration, volumes.psnr.mean(), volumes.ssim.mean(), volumes.nmse.mean(), volumes.hfen.mean(),
             volumes.kspace_residual.mean(), len(volumes))
    return volumes
