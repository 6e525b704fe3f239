"""Comparison methods of Table I (zero-filled, fastMRI U-Net, ...), each trained and run by the same loops."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ldpm.data.masks import batch_masks, sample_mask
from ldpm.evaluate import protocol
from ldpm.io import SliceFile, read_images, stable_seed
from ldpm.data.coils import CoilSlices
from ldpm.physics import Measurement, centre_columns, input_scale, measure, multicoil_measurement, rss
from ldpm.train import EpochSampler, shard, step_rng

log = logging.getLogger("ldpm.validation")


def normalised(x: torch.Tensor, meas: Measurement, masks_cfg: dict) -> tuple[torch.Tensor, Measurement]:
    """(x, measurement) as training sees them under masks_cfg["normalise"] (config data.normalise, default
    "gt_max": unchanged): with "input", image and measurement divided by each zero-filled slice's maximum
    (`ldpm.physics.input_scale`), so the target is in the units the method answers in at test time."""
    s = input_scale(meas.x_u, masks_cfg.get("normalise", "gt_max"))
    return (x, meas) if s is None else (x / s, meas.scaled(s))


def is_multicoil(masks_cfg: dict) -> bool:
    """Whether a training job simulates the multicoil measurement (masks_cfg["measurement"], set by the workflow for
    the models trained on it; default the paper's magnitude measurement)."""
    return masks_cfg.get("measurement", "magnitude") == "multicoil"


def index_files(inputs: dict) -> list[str]:
    """The index files among a stage's inputs (names index_<dataset>): volume → raw file, for the coil slices."""
    return [path for name, path in sorted(inputs.items()) if name.startswith("index_")]


def training_images(inputs: dict, masks_cfg: dict) -> SliceFile | CoilSlices:
    """What a trainer draws its batches from, read per batch: the training file's magnitude slices
    (`ldpm.io.SliceFile`), or under the multicoil measurement the raw coil slices of the same rows
    (`ldpm.data.coils.CoilSlices`, inputs train_csv and index_<dataset>)."""
    if is_multicoil(masks_cfg):
        return CoilSlices(inputs["train_csv"], index_files(inputs), masks_cfg["crop_size"])
    return SliceFile(inputs["train"])


def simulated_measurement(batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor], rng: np.random.Generator,
                          masks_cfg: dict) -> tuple[torch.Tensor, Measurement]:
    """(x, measurement) of a batch: images x (B, 1, H, W), or (coil images (B, C, H, W_raw), acquired columns) from
    `CoilSlices`, whose target x is the RSS of the coil images on the image grid (masks_cfg["crop_size"] columns,
    `centre_columns`: the stored slice); fresh training masks at the k-space's width drawn from `rng` (the same
    draws under both measurements where the widths agree), then `normalised`."""
    coils, acquired = batch if isinstance(batch, tuple) else (None, None)
    sampled = batch if coils is None else coils  # the masks go on its columns
    mask = batch_masks(rng, len(sampled), sampled.shape[-1], masks_cfg["accelerations"],
                       masks_cfg["center_fractions"], masks_cfg.get("type", "random")).to(sampled.device)
    if coils is None:
        x = batch
        meas = measure(x, mask)
    else:
        x = centre_columns(rss(coils), masks_cfg["crop_size"])
        meas = multicoil_measurement(coils, mask, acquired, width=masks_cfg["crop_size"])
    return normalised(x, meas, masks_cfg)


def undersampled_batch(images: SliceFile | CoilSlices | torch.Tensor, sampler: EpochSampler, step: int, seed: int,
                       masks_cfg: dict, device: torch.device) -> tuple[torch.Tensor, Measurement]:
    """Training batch `step` as (x (B, 1, H, W), its measurement) on `device`: the slices of the sampler's batch
    (read only now, `training_images`) and their measurement under fresh masks drawn from (seed, step), so a
    resumed run sees the same masks; scaled by masks_cfg["normalise"] (`normalised`).
    Under torchrun this process's slice of that global batch (`ldpm.train.shard`)."""
    batch = images[sampler.batch(step)]
    batch = tuple(t.to(device) for t in batch) if isinstance(batch, tuple) else batch[:, None].to(device)
    return shard(*simulated_measurement(batch, step_rng(seed, 1, step), masks_cfg))


# ------------------------------------------------------------------------------------------- validation
@dataclass
class ValidationSet:
    """Fixed validation images (N, 1, H, W) and their measurement, on the training device: the same every epoch.
    `parts`: the measurement in consecutive parts whose slices concatenate to x's order (one part, except under
    multicoil where a batch holds one raw width, `CoilSlices.runs`)."""

    index: np.ndarray  # rows of the validation file
    x: torch.Tensor
    parts: list[Measurement]

    def chunks(self, size: int):
        """(x, measurement) in chunks of at most `size` slices, in order."""
        size, offset = max(1, size), 0
        for meas in self.parts:
            for i in range(0, len(meas), size):
                yield self.x[offset + i:offset + i + size], meas[i:i + size]
            offset += len(meas)


def evenly_spaced(n_items: int, n: int) -> np.ndarray:
    """At most n distinct indices spread evenly over range(n_items) (all of them when n >= n_items)."""
    if n <= 0 or n_items == 0:
        return np.zeros(0, dtype=int)
    return np.unique(np.linspace(0, n_items - 1, min(n, n_items)).round().astype(int))


def validation_images(inputs: dict, n_slices: int, stage: str,
                      what: str = "") -> tuple[np.ndarray, torch.Tensor] | None:
    """(rows, images (N, 1, H, W) on the CPU): at most `n_slices` evenly spaced slices of inputs["val"]; None
    (logged) without a validation file or with n_slices = 0."""
    if "val" not in inputs or n_slices <= 0:
        log.info("%s: no validation (%s)", stage, "validation_slices is 0" if n_slices <= 0 else
                 "no validation file among the inputs")
        return None
    images = read_images(inputs["val"])
    index = evenly_spaced(len(images), n_slices)
    log.info("%s: validating on %d of %d slices of %s%s", stage, len(index), len(images), inputs["val"], what)
    return index, torch.from_numpy(images[index])[:, None]


def validation_set(inputs: dict, n_slices: int, seed: int, masks_cfg: dict, device: torch.device,
                   stage: str) -> ValidationSet | None:
    """`validation_images`, each slice with its own fixed mask of the training mask type, drawn from the first
    (AF, centre fraction) pair of the training masks and seeded by stable_seed(seed, "val", slice row); scaled as
    training scales its batches (`normalised`)."""
    af, cf, kind = masks_cfg["accelerations"][0], masks_cfg["center_fractions"][0], masks_cfg.get("type", "random")
    picked = validation_images(inputs, n_slices, stage, f" (fixed {kind} masks, AF {af}, centre fraction {cf})")
    if picked is None:
        return None
    index, x = picked
    x = x.to(device)
    if is_multicoil(masks_cfg):  # the stored slices are the targets; the measurement is their raw coil k-space
        coils = CoilSlices(inputs["val_csv"], index_files(inputs), masks_cfg["crop_size"])
        parts = [coils.measurement(run, val_masks(run, coils.widths[run], seed, af, cf, kind).to(device))
                 for run in coils.runs(len(index), index)]
    else:
        parts = [measure(x, val_masks(index, [x.shape[-1]] * len(index), seed, af, cf, kind).to(device))]
    scaled = [normalised(xs, meas, masks_cfg) for xs, meas in zip(x.split([len(m) for m in parts]), parts)]
    return ValidationSet(index, torch.cat([xs for xs, _ in scaled]), [meas for _, meas in scaled])


def val_masks(rows, widths, seed: int, af: int, cf: float, kind: str) -> torch.Tensor:
    """The fixed validation masks (B, 1, 1, W) of validation-file rows at their widths (one width per call),
    seeded by stable_seed(seed, "val", row)."""
    return torch.from_numpy(np.stack([sample_mask(int(w), af, cf, stable_seed(seed, "val", int(i)), kind)
                                      for i, w in zip(rows, widths)])).float()[:, None, None, :]


def psnr_ssim(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Mean over slices (N, H, W) of PSNR (`ldpm.evaluate.protocol.psnr`) and fastMRI's SSIM, data range = each
    target slice's maximum: training-time validation reads single slices, not their volumes, so the slice maximum
    stands in for the fastMRI protocol's volume maximum (it is scale-free under data.normalise: input)."""
    from fastmri import evaluate as fm

    gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
    psnr = [protocol.psnr(g, p, float(g.max())) for g, p in zip(gt, pred)]
    ssim = [float(fm.ssim(g[None], p[None], float(g.max())).item()) for g, p in zip(gt, pred)]
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim))}


def reconstruction_metrics(recon: Callable[[Measurement], torch.Tensor], val: ValidationSet,
                           batch_size: int) -> dict[str, float]:
    """PSNR / SSIM of a reconstructor `recon(measurement) -> (B, 1, H, W)` on the validation set (see psnr_ssim)."""
    preds = [recon(meas).float().cpu() for _, meas in val.chunks(batch_size)]
    return psnr_ssim(val.x[:, 0].cpu().numpy(), torch.cat(preds)[:, 0].numpy())
