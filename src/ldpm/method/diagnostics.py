"""Where LDPM's latent route loses or gains (beyond the paper): per AF, a table each of PSNR, SSIM and δ, the rows
below × the test splits.

Rows (mean over the split's test volumes, fastMRI protocol; δ = eq. 10 as a mean over sampled k-space entries,
averaged over slices):
- zero-filled x_u, the measurement every method starts from;
- sketch c = |DC(R(x_u))|, LDPM's condition (SkM, eqs. 2–3);
- D(E(c)), the MR-VAE round trip of the sketch (what the condition can carry through the latent space);
- D(E(x)), the MR-VAE round trip of the ground truth (the ceiling of any latent sample);
- LDPM with c_latent = 0 (does the condition matter?);
- LDPM without the guidance stage (t ≤ p stage off; latent DC kept): δ here vs LDPM's is the guidance's effect;
- LDPM, read from its reconstruction file (Table I's numbers).
The LDPM rows that are sampled here use the reconstructor with the pipeline seed, so their noise is LDPM's. Every
row is computed from the measurement scaled by data.normalise, scaled back, and clipped as every method's output
(`ldpm.physics.clip_output`: negatives to 0, no upper clip).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ldpm.data.masks import load_test_masks
from ldpm.evaluate.metrics import image_metrics
from ldpm.evaluate.tables import Block, select, write_tables
from ldpm.io import read_images, read_recon, read_table
from ldpm.method.reconstruct import build_ldpm, load_ldpm_models
from ldpm.models.latent import decode, encode
from ldpm.models.swinir import sketcher
from ldpm.physics import clip_output, input_scale, measure
from ldpm.sampling.dual_stage import kspace_loss
from ldpm.train import resolve_device

log = logging.getLogger("ldpm.method")

ROWS = {"zero_filled": "zero-filled x_u", "sketch": "sketch |DC(R(x_u))|", "vae_sketch": "MR-VAE D(E(sketch))",
        "vae_gt": "MR-VAE D(E(x)) (ceiling)", "ldpm_zero_condition": "LDPM, condition zeroed",
        "ldpm_unguided": "LDPM without guidance stage", "ldpm": "LDPM"}


@torch.no_grad()
def diagnostic_images(gt: np.ndarray, masks: torch.Tensor, weights: dict[str, str], hp: dict, seed: int,
                      device: str = "auto", batch_size: int = 16, normalise: str = "gt_max") -> dict[str, np.ndarray]:
    """{row: (N, H, W) images} for every row computed here, from the ground truth (N, H, W) and its test masks.
    Under data.normalise "input" the rows are computed from x, k_u and x_u divided by each zero-filled slice's
    maximum (the ground-truth ceiling row too: it bounds what LDPM samples in those units) and multiplied back."""
    dev = resolve_device(device)
    weights = {k: Path(v) for k, v in weights.items()}
    models = load_ldpm_models(weights, hp, dev)  # one copy for the sketch, the VAE rows and both LDPM rows
    vae, runners = models.vae, {}
    for row, kwargs in (("ldpm_zero_condition", {"condition": "zero"}), ("ldpm_unguided", {"use_guidance": False})):
        torch.manual_seed(seed)  # as `ldpm.reconstruct` does: the same noise as LDPM's own run
        runners[row] = (build_ldpm(weights, hp, dev, models=models), kwargs)
    out = {row: np.empty_like(gt) for row in ("zero_filled", "sketch", "vae_sketch", "vae_gt", *runners)}
    for start in range(0, len(gt), batch_size):
        sl = slice(start, start + batch_size)
        x, mask = torch.from_numpy(gt[sl])[:, None].to(dev), masks[sl].to(dev)
        meas = measure(x, mask)
        s = input_scale(meas.x_u, normalise)
        if s is not None:
            x, meas = x / s, meas.scaled(s)
        c = sketcher(meas, models.net)
        images = {"zero_filled": meas.x_u, "sketch": c, "vae_sketch": decode(vae, encode(vae, c)),
                  "vae_gt": decode(vae, encode(vae, x))}
        images |= {row: run(meas, sketch=c, **kwargs) for row, (run, kwargs) in runners.items()}
        for row, image in images.items():
            out[row][sl] = clip_output(image.float() if s is None else image.float() * s)[:, 0].cpu().numpy()
    return out


def mean_delta(gt: np.ndarray, pred: np.ndarray, masks: torch.Tensor) -> np.ndarray:
    """δ of eq. 10 per slice (mean over the sampled entries), k_u = F(gt)·M."""
    mask = masks[:, 0][:, None]
    return kspace_loss(torch.from_numpy(pred)[:, None], measure(torch.from_numpy(gt)[:, None], mask), "mean").numpy()


QUANTITIES = {"psnr": ("PSNR", ".2f"), "ssim": ("SSIM", ".4f"), "delta": ("δ", "#.3g")}  # md / tex: name, format


def write_diagnostics(frame: pd.DataFrame, splits: list[str], acceleration: int, mask_type: str,
                      out_stem: str | Path) -> None:
    """`frame`: one record per (split, row) with psnr, ssim, delta. The csv: one line per row, a column per split ×
    quantity (full precision, as before). The md / tex: one table per quantity, rows × splits (a page wide, as
    Table III)."""
    labels = list(ROWS.values())
    wide = frame.pivot_table(index="quantity", columns="split", values=list(QUANTITIES), sort=False)
    wide.columns = [f"{split} {QUANTITIES[q][0]}" for q, split in wide.columns]
    wide = wide.reindex(index=labels, columns=[f"{s} {name}" for s in splits for name, _ in QUANTITIES.values()])
    blocks = []
    for q, (name, spec) in QUANTITIES.items():
        shown = frame.pivot(index="quantity", columns="split", values=q).reindex(index=labels, columns=splits)
        what = "δ (eq. 10, mean over sampled k-space entries)" if q == "delta" else f"mean {name} over test volumes"
        blocks.append(Block(f"LDPM diagnostics, AF {acceleration}, {mask_type} masks: {what} per test split",
                            shown.rename_axis(index=None, columns=None), formats=dict.fromkeys(splits, spec)))
    write_tables(wide, out_stem, blocks,
                 notes=["δ of 'LDPM without guidance stage' against 'LDPM' is the effect of the k-space guidance; "
                        "'condition zeroed' shows what the MRCN takes from the sketch; the MR-VAE rows bound what any "
                        "latent sample can reach."])


def ldpm_diagnostics(test_h5, test_csv, masks_npz, ldpm_recon, weights: dict[str, str], hp: dict,
                     test_splits: dict[str, dict], acceleration: int, seed: int, out_stem: str | Path,
                     device: str = "auto", mask_type: str = "random", normalise: str = "gt_max") -> pd.DataFrame:
    gt, meta = read_images(test_h5), read_table(test_csv)
    masks = load_test_masks(masks_npz, meta["slice_id"].tolist())
    images = diagnostic_images(gt, masks, weights, hp, seed, device, normalise=normalise)
    images["ldpm"] = read_recon(ldpm_recon)
    deltas = {row: mean_delta(gt, im, masks) for row, im in images.items()}
    records = []
    for split, filters in test_splits.items():
        volumes = select(meta, filters, split).groupby("volume", sort=False).groups
        for row in ROWS:
            per_volume = [image_metrics(gt[idx], images[row][idx]) for idx in volumes.values()]
            idx = np.concatenate([np.asarray(i) for i in volumes.values()])
            records.append({"split": split, "row": row, "quantity": ROWS[row],
                            "psnr": np.mean([m["psnr"] for m in per_volume]),
                            "ssim": np.mean([m["ssim"] for m in per_volume]),
                            "delta": float(deltas[row][idx].mean()), "volumes": len(per_volume)})
    frame = pd.DataFrame(records)
    write_diagnostics(frame, list(test_splits), acceleration, mask_type, out_stem)
    for row in frame[frame.split == next(iter(test_splits))].itertuples():
        log.info("%-32s PSNR %.3f SSIM %.4f δ %.3g", row.quantity, row.psnr, row.ssim, row.delta)
    return frame
