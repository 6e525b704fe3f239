"""The pipeline's one PSNR (numpy only). Its own module, so that the training stages, whose validation curves use it,
depend on this function alone and not on the rest of `ldpm.evaluate.metrics`. Callers call it as `protocol.psnr`."""

from __future__ import annotations

import numpy as np


def psnr(gt: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """10·log10(data_range² / MSE) in dB over every element of gt and pred (a slice or a volume); inf if equal.
    The fastMRI protocol's data_range is the ground-truth volume maximum. Differences are taken in the inputs'
    precision (float32 stays float32) and squared errors averaged in float64, as fastMRI's `evaluate.psnr`
    (scikit-image) does, so Table I's numbers are unchanged by this function."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    dtype = np.result_type(gt.dtype, pred.dtype, np.float32)
    mse = np.mean((gt.astype(dtype, copy=False) - pred.astype(dtype, copy=False)) ** 2, dtype=np.float64)
    return float(10 * np.log10(data_range**2 / mse)) if mse > 0 else float("inf")
