"""Where `ldpm train MODEL` and `ldpm reconstruct METHOD` find their code: one line per model or method.

Entries are "module:function" strings, imported only when used, so `ldpm masks` does not pay for diffusers.

Contracts (every entry follows them, so the CLI and the Snakemake rules have one code path):
- trainer(inputs, out, ckpt_dir, hp, masks, seed, device, *, val_slices=32) -> history. `inputs` maps names to
  files the stage reads (e.g. {"train": "results/data/train.h5", "val": "results/data/val.h5", "sketcher":
  ".../sketcher.safetensors"}); `out` is the final safetensors file; `ckpt_dir` holds resumable checkpoints; `hp`
  is the model's config block; `masks` the config's `masks.train` block (fresh masks per step; stages without
  masks ignore it). Every epoch the stage is scored on at most `val_slices` evenly spaced slices of inputs["val"]
  (none without it; 0 turns validation off), and it writes `ldpm.train.curve_path(out)`
  (<out>.curve.csv: step, epoch, name, value) with its per-epoch training losses and validation numbers.
- reconstructor factory(weights, hp, device) -> callable(measurement) -> image (B, 1, H, W); the measurement is an
  `ldpm.physics.Measurement` (k_u, mask, zero-filled x_u, coil maps and phase, the operator's forward, adjoint and
  data consistency). `weights` maps names to files (empty for zero-filled).
"""

from __future__ import annotations

import importlib
from typing import Callable

from ldpm import LdpmError

TRAINERS: dict[str, str] = {
    "unet": "ldpm.baselines.unet:train_unet",
    "varnet": "ldpm.baselines.varnet:train_varnet",
    "swinmr": "ldpm.baselines.swinmr:train_swinmr",
    "score_mri": "ldpm.baselines.score_mri:train_score_mri",
    # LDPM (ldpm.method): natural-image stand-ins for SD (embedded scale only), SkM, MR-VAE, MRCN
    "ldpm_natural_vae": "ldpm.method.training:train_natural_vae",
    "ldpm_natural_unet": "ldpm.method.training:train_natural_unet",
    "ldpm_sketcher": "ldpm.method.training:train_sketcher",
    "ldpm_mrvae": "ldpm.method.training:train_mrvae",
    "ldpm_mrcn": "ldpm.method.training:train_mrcn",
    # the MRCNs the ablations run with in ldpm.ablations_mode: retrain
    "ldpm_mrcn_no_mrvae": "ldpm.method.training:train_mrcn_no_mrvae",
    "ldpm_mrcn_no_skm": "ldpm.method.training:train_mrcn_no_skm",
}

RECONSTRUCTORS: dict[str, str] = {
    "zero_filled": "ldpm.reconstruct:zero_filled",
    "cs_tv": "ldpm.baselines.cs:cs_tv",  # classical compressed sensing (beyond the paper; ldpm.baselines.cs)
    "cs_wavelet": "ldpm.baselines.cs:cs_wavelet",
    "unet": "ldpm.baselines.unet:reconstructor",
    "varnet": "ldpm.baselines.varnet:reconstructor",
    "swinmr": "ldpm.baselines.swinmr:reconstructor",
    "score_mri": "ldpm.baselines.score_mri:reconstructor",
    # LDPM and its Table II ablations (ldpm.method.reconstruct)
    "ldpm": "ldpm.method.reconstruct:ldpm",
    "ldpm_no_mrvae": "ldpm.method.reconstruct:ldpm_no_mrvae",
    "ldpm_no_skm": "ldpm.method.reconstruct:ldpm_no_skm",
    "ldpm_no_dss": "ldpm.method.reconstruct:ldpm_no_dss",
    # variants beyond the paper (extra rows)
    "ldpm_final_dc": "ldpm.method.reconstruct:ldpm_final_dc",
    "ldpm_mean_k": "ldpm.method.reconstruct:ldpm_mean_k",
}


def resolve(table: dict[str, str], name: str, what: str) -> Callable:
    if name not in table:
        raise LdpmError(f"unknown {what} '{name}'; known: {', '.join(sorted(table))}")
    module, func = table[name].split(":")
    return getattr(importlib.import_module(module), func)
