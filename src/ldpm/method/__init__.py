"""LDPM itself (paper section II) as pipeline stages: Sketcher, MR-VAE, MRControlNet, Dual-Stage Sampler.

- `components`: the pretrained starting points for both scales (SD-2-1-base from `ldpm.sd_dir`, or tiny models
  pretrained here on scikit-image photographs) and loaders for every saved LDPM weight file.
- `training`: the trainers of `ldpm.stages.TRAINERS` (natural-image VAE / U-Net, sketcher, MR-VAE, MRCN).
- `reconstruct`: the reconstructors of `ldpm.stages.RECONSTRUCTORS` (LDPM and its Table II ablations).
The equations live in the library modules these reuse: `ldpm.models.*`, `ldpm.losses`, `ldpm.sampling.dual_stage`.
"""

from __future__ import annotations

from pathlib import Path

from ldpm import LdpmError


def check_sd_dir(sd_dir: str | None) -> Path | None:
    """`ldpm.sd_dir` as a Path (paper scale) or None (embedded scale); a missing folder is a one-line error naming
    the key. Kept free of torch imports so the Snakefile can check it before any job runs."""
    if not sd_dir:
        return None
    path = Path(sd_dir)
    if not path.is_dir():
        raise LdpmError(f"config key ldpm.sd_dir: {path} is not a directory; point it at a local copy of "
                        "stable-diffusion-2-1-base (diffusers layout: vae/, unet/, ...) or set it to null for the "
                        "embedded tiny models")
    return path
