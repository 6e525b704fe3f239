"""MRI forward model on magnitude images: centred orthonormal 2D FFT, Cartesian undersampling, data consistency.

Every method sees the same measurement: the single-coil Cartesian k-space of the RSS magnitude image,
k_u = F(x) * M, with the mask M selecting phase-encode columns (the last image axis).
Images are (..., H, W) tensors; masks broadcast against them, e.g. shape (..., 1, W) with values 0/1.
The FFTs are fastMRI's (`fastmri.fft2c` / `fastmri.ifft2c`), used through complex tensors.
"""

from __future__ import annotations

import fastmri
import torch


def fft2(image: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two axes; real or complex in, complex out."""
    image = image if image.is_complex() else image.to(torch.complex64)
    return torch.view_as_complex(fastmri.fft2c(torch.view_as_real(image)).contiguous())


def ifft2(kspace: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse 2D FFT over the last two axes; complex out."""
    return torch.view_as_complex(fastmri.ifft2c(torch.view_as_real(kspace.to(torch.complex64))).contiguous())


def undersample(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (k_u, x_u): the masked k-space F(x)*M and the zero-filled magnitude |F^-1(k_u)|."""
    kspace_u = fft2(image) * mask
    return kspace_u, ifft2(kspace_u).abs()


def data_consistency(image: torch.Tensor, kspace_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3: F^-1{F[image]·(1-M) + k_u·M}. Returns the complex image; callers take .abs() for a magnitude."""
    return ifft2(fft2(image) * (1 - mask) + kspace_u * mask)


def kspace_residual(image: torch.Tensor, kspace_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared k-space error on the sampled lines, ‖(F(image) − k_u)·M‖², summed over the last two axes (eq. 10)."""
    return ((fft2(image) - kspace_u) * mask).abs().pow(2).sum(dim=(-2, -1))


def clip_output(image: torch.Tensor) -> torch.Tensor:
    """The one output policy (`ldpm.reconstruct`): negatives become 0, since a magnitude image is non-negative; no
    upper clip, because the natural bound (1) is the fully-sampled volume's maximum, which no method may know. Here,
    beside the forward model, so training code uses it without depending on the reconstruct stage's code."""
    return image.clamp_min(0)


NORMALISE_RULES = ("gt_max", "input")  # config data.normalise


def _checked(rule: str) -> str:
    if rule not in NORMALISE_RULES:
        raise ValueError(f"data.normalise must be one of {', '.join(NORMALISE_RULES)}, got {rule!r}")
    return rule


def input_scale(x_u: torch.Tensor, rule: str) -> torch.Tensor | None:
    """The factor a measurement is divided by before a method sees it (config `data.normalise`), (B, 1, 1, 1):
    - "gt_max" (the paper's protocol): None. The slices are stored divided by their ground-truth volume maximum
      (`ldpm.data.preprocess`), so the measurement already carries that scale;
    - "input": each zero-filled slice's maximum, max |x_u|: known from the measurement alone, so no method learns
      the ground truth's scale. Per slice, because training draws slices, not volumes.
    """
    if _checked(rule) == "gt_max":
        return None
    return x_u.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(x_u.dtype).tiny)


def scaled_method(run, rule: str):
    """`run(x_u, k_u, mask, **kw)` fed the measurement under `rule` (`input_scale`), its output multiplied back into
    the units of the stored slices, which every metric compares against. Under "gt_max", `run` itself."""
    if _checked(rule) == "gt_max":
        return run

    def scaled(x_u: torch.Tensor, k_u: torch.Tensor, mask: torch.Tensor, **kwargs) -> torch.Tensor:
        s = input_scale(x_u, rule)
        return run(x_u / s, k_u / s, mask, **kwargs) * s

    return scaled
