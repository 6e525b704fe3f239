"""Classical compressed sensing: the reference rows every MRI benchmark carries, on the same measurement as every other
method.

    x̂ = argmin_x ½‖M F S x − k_u‖² + λ R(x),   image = |x̂|

with F the centred orthonormal 2D FFT (`ldpm.physics.fft2`), M the sampling mask, S the coil maps and R
- "cs_tv": isotropic total variation, Σ over pixels of the ℓ2 norm of the image gradient (finite differences along
  both image axes, periodic): fastMRI's CS baseline (BART `pics -R T:7:0:λ -i 200`, fastmri_examples/cs; BART's
  T thresholds the gradient's components jointly, which tests/test_cs.py confirmed against `bart` 0.8);
- "cs_wavelet": the L1 norm of Daubechies-4 wavelet coefficients (Lustig et al. 2007).
Under today's measurement there is one coil with a map of ones: the k-space of the magnitude image. x is complex, as
in BART and sigpy: nothing in the measurement forces it to be real.

Backends (config `cs.backend`):
- "sigpy" (default): sigpy's solvers for its TotalVariationRecon (primal-dual hybrid gradient) and L1WaveletRecon
  (accelerated proximal gradient) apps, `cs.iterations` iterations, on a batch of slices (`cs_reconstruct`).
- "bart": `bart pics -d0 -w 1 -R T|W:3:0:λ -i <iterations>` (ADMM), where the `bart` command is on PATH (Debian
  package bart). `-w 1` keeps BART from rescaling the data, so λ weighs the same objective in both backends; fastMRI
  lets BART scale the data, so its λ (0.01) is on BART's scale, not ours. BART's wavelet is its own Daubechies-2, not
  db4: only the TV rows agree across backends (tests/test_cs.py compares them where `bart` is installed).
λ is chosen per AF on the validation split (`tune_cs`, the way every tuned method is tuned: `ldpm.tuning`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import sigpy as sp
import torch

from ldpm import LdpmError
from ldpm.physics import Measurement
from ldpm.tuning import chosen, grid_search

PRIORS = {"cs_tv": "tv", "cs_wavelet": "wavelet"}  # method -> prior
BACKENDS = ("sigpy", "bart")


def cs_reconstruct(k_u: np.ndarray, mask: np.ndarray, lam: float, prior: str, iterations: int = 200,
                   maps: np.ndarray | None = None, backend: str = "sigpy") -> np.ndarray:
    """Slices at once: k_u (N, C, H, W) complex, zero where not sampled; mask broadcastable to it (1 = sampled);
    maps (N, C, H, W) with Σ_c |S_c|² ≤ 1 per pixel (ESPIRiT's are), ones by default. Returns the complex images
    (N, H, W).

    sigpy's own apps (TotalVariationRecon, L1WaveletRecon) solve one slice at a time and estimate their step sizes
    by a power iteration from numpy's global random state; here the same sigpy solvers (LinearLeastSquares with the
    same operators and proximal maps) run on a stack of slices, which the objective keeps independent, with the
    step sizes set from the operator norms' bounds: ‖M F S‖² ≤ 1 and ‖G‖² ≤ 8 (periodic differences along two
    axes). So a slice's image is the same in any batch (tuning and test batch differently) and in every run.
    TV's primal-dual steps satisfy σ·τ·9 = 1 with σ/τ = 9λ: the image is of order 1 (data.normalise) and the TV
    dual is bounded by λ, and this balance reached BART's 3000-iteration image in 200 iterations for λ 0.001-0.1
    where sigpy's default σ = 1 stopped far from it (README, "Classical CS rows")."""
    if prior not in PRIORS.values():
        raise ValueError(f"prior must be one of {sorted(PRIORS.values())}, got {prior!r}")
    k_u = np.asarray(k_u, dtype=np.complex64)
    maps = np.ones(k_u.shape, dtype=np.complex64) if maps is None else np.asarray(maps, dtype=np.complex64)
    if np.max(np.sum(np.abs(maps) ** 2, axis=1)) > 1 + 1e-3:
        raise ValueError("coil maps must satisfy Σ_c |S_c|² ≤ 1 at every pixel (normalise them, as ESPIRiT does)")
    if backend == "bart":
        return np.stack([bart_pics(k, s, lam, prior, iterations) for k, s in zip(k_u, maps)])
    if backend != "sigpy":
        raise LdpmError(f"config key cs.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    n, _, h, w = k_u.shape
    image_shape = (n, 1, h, w)
    weights = np.broadcast_to(np.asarray(mask, dtype=np.float32), k_u.shape)
    forward = (sp.linop.Multiply(k_u.shape, weights) * sp.linop.FFT(k_u.shape, axes=(2, 3), center=True)
               * sp.linop.Multiply(image_shape, maps))
    y = k_u * weights
    if prior == "tv":
        grad = sp.linop.FiniteDifference(image_shape, axes=(2, 3))
        app = sp.app.LinearLeastSquares(forward, y, proxg=GradientNormL1(grad.oshape, lam), G=grad,
                                        max_iter=iterations, sigma=lam ** 0.5, tau=1 / (9 * lam ** 0.5),
                                        show_pbar=False)
    else:
        wavelet = sp.linop.Wavelet(image_shape, axes=(2, 3), wave_name="db4")
        proxg = sp.prox.UnitaryTransform(sp.prox.L1Reg(wavelet.oshape, lam), wavelet)
        app = sp.app.LinearLeastSquares(forward, y, proxg=proxg, max_iter=iterations, alpha=1.0, show_pbar=False)
    return app.run()[:, 0]


class GradientNormL1(sp.prox.Prox):
    """The proximal map of λ Σ_pixels ‖g‖₂, g the gradient along axis 0 (isotropic TV on FiniteDifference's output):
    each pixel's gradient vector shrinks towards 0 by λ·α in length (sigpy 0.1.27 has no group-L1 prox)."""

    def __init__(self, shape, lam: float):
        self.lam = lam
        super().__init__(shape)

    def _prox(self, alpha, g):
        length = np.sqrt(np.sum(np.abs(g) ** 2, axis=0, keepdims=True))
        return g * np.maximum(1 - alpha * self.lam / np.maximum(length, np.finfo(np.float32).tiny), 0)


def bart_pics(k_u: np.ndarray, maps: np.ndarray, lam: float, prior: str, iterations: int) -> np.ndarray:
    """`bart pics` on one slice: k_u and maps (C, H, W), returns the complex image (H, W). BART's arrays are
    (x, y, z, coils), column-major."""
    bart = shutil.which("bart")
    if bart is None:
        raise LdpmError("config key cs.backend: bart needs the `bart` command on PATH (Debian package bart); "
                        "install it or set cs.backend: sigpy")
    with tempfile.TemporaryDirectory() as tmp:
        kspace, sens, out = (str(Path(tmp) / name) for name in ("kspace", "sens", "out"))
        write_cfl(kspace, k_u.transpose(1, 2, 0)[:, :, None, :])
        write_cfl(sens, maps.transpose(1, 2, 0)[:, :, None, :])
        regulariser = f"{'T' if prior == 'tv' else 'W'}:3:0:{lam}"
        subprocess.run([bart, "pics", "-d0", "-w", "1", "-R", regulariser, "-i", str(iterations), kspace, sens, out],
                       check=True, capture_output=True)
        return read_cfl(out).reshape(k_u.shape[1:])


def write_cfl(stem: str, array: np.ndarray) -> None:
    """BART's format: <stem>.hdr (the dimensions) and <stem>.cfl (complex64, column-major)."""
    Path(stem + ".hdr").write_text("# Dimensions\n" + " ".join(map(str, array.shape)) + "\n")
    np.asarray(array, dtype=np.complex64).ravel(order="F").tofile(stem + ".cfl")


def read_cfl(stem: str) -> np.ndarray:
    dims = [int(d) for d in Path(stem + ".hdr").read_text().splitlines()[1].split()]
    return np.fromfile(stem + ".cfl", dtype=np.complex64).reshape(dims, order="F")


def reconstructor_for(method: str, lam: float, hp: dict):
    """measurement -> image (B, 1, H, W): the batch at once on the CPU (both backends run on numpy). The coil
    k-space and maps are the measurement's (one coil with a map of ones under magnitude; ESPIRiT maps under
    multicoil, as fastMRI's BART baseline); the output is |x̂| of the complex image, reconstructed at the raw width
    and brought to the image grid (`Measurement.to_grid`) as fastMRI crops BART's."""
    prior = PRIORS[method]

    def run(meas: Measurement) -> torch.Tensor:
        maps = None if meas.maps is None else meas.maps.detach().cpu().numpy()
        image = cs_reconstruct(meas.k_u.detach().cpu().numpy(), meas.mask.detach().cpu().numpy(), lam, prior,
                               hp["iterations"], maps=maps, backend=hp["backend"])
        return meas.to_grid(torch.from_numpy(np.abs(image)[:, None].astype(np.float32)).to(meas.x_u.device))

    return run


def cs_tv(weights: dict[str, Path], hp: dict, device: torch.device):
    """Reconstructor factory (`ldpm.stages`): λ from weights["tuned"], the validation choice."""
    return reconstructor_for("cs_tv", chosen(weights["tuned"])["lam"], hp)


def cs_wavelet(weights: dict[str, Path], hp: dict, device: torch.device):
    return reconstructor_for("cs_wavelet", chosen(weights["tuned"])["lam"], hp)


def tune_cs(method: str, val_h5: str | Path, val_csv: str | Path, hp: dict, acceleration: int,
            center_fraction: float, seed: int, out_json: str | Path, out_csv: str | Path, *, mask_type: str = "random",
            normalise: str = "gt_max", **protocol) -> dict:
    """Choose λ of `method` among hp["lam"][method] on hp["val_slices"] validation slices (`ldpm.tuning`) under the
    measurement `protocol` (measurement, index_csvs, crop_size; `ldpm.tuning.grid_search`)."""
    return grid_search(lambda settings: reconstructor_for(method, settings["lam"], hp), {"lam": hp["lam"][method]},
                       val_h5, val_csv, hp["val_slices"], acceleration, center_fraction, seed, out_json, out_csv,
                       device=torch.device("cpu"), fixed={"backend": hp["backend"], "iterations": hp["iterations"]},
                       mask_type=mask_type, normalise=normalise, what=f"cs.lam.{method}", **protocol)
