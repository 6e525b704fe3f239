"""MRI forward models: one measurement operator with two instances, data consistency, the output policy.

`Measurement` is the operator A = M·F·S with its data k_u; every method reads its measurement from it:
- "magnitude" (the paper's protocol, `measure`): one coil, a map of ones, zero phase: the single-coil Cartesian
  k-space of the RSS magnitude image, k_u = F(x)·M;
- "multicoil" (`multicoil_measurement`): the raw coil k-space at the image grid, masked; coil maps estimated from
  its own ACS lines (ESPIRiT, `espirit_maps`); the magnitude image carries a phase estimate (`acs_phase`).
With one coil, no maps and no phase every operation is today's single-coil formula, operation for operation, so the
magnitude instance reproduces the single-coil numbers bit for bit (tests/test_measurement.py).
Images are (..., H, W) tensors; masks broadcast against them, e.g. shape (B, 1, 1, W) with values 0/1 over the
phase-encode columns (the last axis). The FFTs are fastMRI's (`fastmri.fft2c` / `fastmri.ifft2c`).
"""

from __future__ import annotations

from typing import Callable

import fastmri
import numpy as np
import torch

from ldpm import LdpmError


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


def rss(coil_images: torch.Tensor) -> torch.Tensor:
    """Root-sum-of-squares over the coil axis (dim 1) of complex (B, C, H, W) coil images: (B, 1, H, W). One coil:
    its magnitude, computed as |·| (the single-coil formula)."""
    if coil_images.shape[1] == 1:
        return coil_images.abs()
    return coil_images.abs().pow(2).sum(dim=1, keepdim=True).sqrt()


def centre_columns(image: torch.Tensor, width: int) -> torch.Tensor:
    """The last axis brought to `width` about its centre: the centre columns (fastMRI's `center_crop` offset,
    (W − width) // 2) or zero-padded with the same offset (as `ldpm.data.preprocess` pads a narrow volume), so the
    two are each other's adjoint; itself when the widths agree."""
    extra = width - image.shape[-1]
    if extra == 0:
        return image
    if extra < 0:
        start = -extra // 2
        return image[..., start:start + width]
    return torch.nn.functional.pad(image, (extra // 2, extra - extra // 2))


MEASUREMENTS = ("magnitude", "multicoil")  # config `measurements`


def check_measurement(name: str) -> str:
    if name not in MEASUREMENTS:
        raise LdpmError(f"config key measurements: unknown measurement '{name}'; known: {', '.join(MEASUREMENTS)}")
    return name


class Measurement:
    """The measurement operator A = M·F·S (and phase P) with its data; what every reconstructor is given.

    k_u   (B, C, H, W) complex: the measured coil k-space, zero off the mask;
    mask  (B, 1, 1, W) 0/1: the sampled phase-encode columns (never a padding column of the raw data);
    x_u   (B, 1, H, W): the zero-filled image every image-to-image method starts from: RSS of F⁻¹(k_u) over coils
          (|F⁻¹(k_u)| for one coil), as fastMRI's zero-filled baselines; stored, so scaling keeps its bits;
    maps  (B, C, H, W) complex coil sensitivities S, or None: one coil with a map of ones;
    phase (B, 1, H, W) complex unit phase P given to a magnitude image, or None: zero phase.
    `estimate(k_u, mask) -> (maps, phase)`, when given, computes maps and phase on first use (ESPIRiT costs more
    than an image-to-image method's whole forward pass, and most methods never ask for them).
    `width`: the image grid's columns when the raw k-space has another number (fastMRI's knee files: 368 for a
    320 image; brain files 396 or, narrower, 203-260): the image and the raw grid share their pixel size and
    centre, so Z brings an image to the raw width (zero-padded when the raw grid is wider, its centre columns when
    narrower, `centre_columns`) before the maps and Zᵀ takes it back after the adjoint; x_u is the RSS brought to
    the image grid, as fastMRI's zero-filled and VarNet outputs are cropped and as preprocessing pads a narrow
    volume's ground truth. k_u, mask, maps and phase are at the raw width.
    A magnitude image m is the object P·Z·m; the forward model is A(m) = M·F(S·P·Z·m), the adjoint
    Aᴴ(k) = Zᵀ·P̄·Sᴴ·F⁻¹(M·k) (a complex image; methods take its modulus or real part).
    """

    def __init__(self, k_u: torch.Tensor, mask: torch.Tensor, x_u: torch.Tensor | None = None,
                 maps: torch.Tensor | None = None, phase: torch.Tensor | None = None, *,
                 estimate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 width: int | None = None):
        self.k_u, self.mask = k_u, mask
        self.width = k_u.shape[-1] if width is None else width
        self.x_u = self.to_grid(rss(ifft2(k_u))) if x_u is None else x_u
        self._maps, self._phase, self._estimate = maps, phase, estimate

    def _sense(self) -> None:
        if self._estimate is not None:
            self._maps, self._phase = self._estimate(self.k_u, self.mask)
            self._estimate = None

    @property
    def maps(self) -> torch.Tensor | None:
        self._sense()
        return self._maps

    @property
    def phase(self) -> torch.Tensor | None:
        self._sense()
        return self._phase

    @property
    def coils(self) -> int:
        return self.k_u.shape[1]

    def to_grid(self, image: torch.Tensor) -> torch.Tensor:
        """Zᵀ: an image at the raw width brought to the image grid (`centre_columns`)."""
        return centre_columns(image, self.width)

    def to_raw(self, image: torch.Tensor) -> torch.Tensor:
        """Z: an image-grid image brought to the raw width (`centre_columns`), placed where `to_grid` takes it back."""
        return centre_columns(image, self.k_u.shape[-1])

    def to_coils(self, image: torch.Tensor) -> torch.Tensor:
        """S·P·Z·image: (B, 1, H, W) real or complex → (B, C, H, W_raw) coil images (the image itself without maps)."""
        image = self.to_raw(image)
        image = image if self.phase is None else image * self.phase
        return image if self.maps is None else self.maps * image

    def from_coils(self, coil_images: torch.Tensor) -> torch.Tensor:
        """Zᵀ·P̄·Sᴴ·coil_images: (B, C, H, W_raw) → (B, 1, H, W) complex (the coil images themselves without maps)."""
        image = coil_images if self.maps is None else (self.maps.conj() * coil_images).sum(dim=1, keepdim=True)
        return self.to_grid(image if self.phase is None else image * self.phase.conj())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """A(image) = M·F(S·P·image), (B, C, H, W)."""
        return fft2(self.to_coils(image)) * self.mask

    def adjoint(self, kspace: torch.Tensor) -> torch.Tensor:
        """Aᴴ(kspace) = P̄·Sᴴ·F⁻¹(M·kspace), (B, 1, H, W) complex."""
        return self.from_coils(ifft2(kspace * self.mask))

    def data_consistency(self, image: torch.Tensor) -> torch.Tensor:
        """Eq. 3 through the operator: P̄·Sᴴ·F⁻¹{F(S·P·image)·(1−M) + k_u·M}, complex (B, 1, H, W); callers take
        .abs() for a magnitude. One coil, no maps, no phase: F⁻¹{F(image)·(1−M) + k_u·M}."""
        return self.from_coils(ifft2(fft2(self.to_coils(image)) * (1 - self.mask) + self.k_u * self.mask))

    def residual(self, image: torch.Tensor) -> torch.Tensor:
        """‖(A(image) − k_u)‖² per coil, (B, C): the k-space error on the sampled entries (eq. 10)."""
        return ((fft2(self.to_coils(image)) - self.k_u) * self.mask).abs().pow(2).sum(dim=(-2, -1))

    def n_sampled(self) -> torch.Tensor:
        """(B,) number of sampled k-space entries over coils: eq. 10's mean normalisation."""
        return torch.broadcast_to(self.mask, self.k_u.shape).flatten(1).sum(1).clamp_min(1)

    def scaled(self, s: torch.Tensor | None) -> "Measurement":
        """The measurement of the image divided by s (B, 1, 1, 1): k_u and x_u divided, the operator unchanged
        (maps and phase, estimated from the unscaled data when first used)."""
        if s is None:
            return self
        pending = self._estimate is not None
        return Measurement(self.k_u / s, self.mask, self.x_u / s, self._maps, self._phase,
                           estimate=(lambda *_: (self.maps, self.phase)) if pending else None, width=self.width)

    def __getitem__(self, rows: slice) -> "Measurement":
        """The measurement of a slice of the batch (maps not estimated yet are estimated for those rows alone)."""
        pick = (lambda t: None if t is None else t[rows])
        return Measurement(self.k_u[rows], self.mask[rows], self.x_u[rows], pick(self._maps), pick(self._phase),
                           estimate=self._estimate, width=self.width)

    def __len__(self) -> int:
        return len(self.k_u)


def measure(image: torch.Tensor, mask: torch.Tensor) -> Measurement:
    """The magnitude instance (the paper's protocol): k_u = F(image)·M of the (B, 1, H, W) magnitude image."""
    k_u, x_u = undersample(image, mask)
    return Measurement(k_u, mask, x_u)


def data_consistency(image: torch.Tensor, kspace_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3 on the single-coil measurement: F^-1{F[image]·(1-M) + k_u·M} (the magnitude instance's)."""
    return Measurement(kspace_u, mask).data_consistency(image)


def kspace_residual(image: torch.Tensor, kspace_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared k-space error on the sampled lines, ‖(F(image) − k_u)·M‖², summed over the last two axes (eq. 10)."""
    return Measurement(kspace_u, mask).residual(image)


# ------------------------------------------------------------------------------------------- multicoil
def acs_span(mask) -> tuple[int, int]:
    """(start, stop) of the fully sampled centre of a (W,) 0/1 mask: the run of sampled columns through W // 2 (the
    ACS lines every fastMRI mask keeps, with any sampled neighbours), as fastMRI's VarNet finds it when the count is
    not given. (W // 2, W // 2) when the centre column is not sampled."""
    m = np.asarray(mask, dtype=bool).reshape(-1)
    centre = len(m) // 2
    if not m[centre]:
        return centre, centre
    start, stop = centre, centre + 1
    while start > 0 and m[start - 1]:
        start -= 1
    while stop < len(m) and m[stop]:
        stop += 1
    return start, stop


def acs_columns(mask) -> int:
    start, stop = acs_span(mask)
    return stop - start


def espirit_maps(kspace: torch.Tensor, acs: tuple[int, int], kernel: int = 6, thresh: float = 0.02,
                 crop: float = 0.0) -> torch.Tensor:
    """ESPIRiT coil maps (C, H, W) of one slice (C, H, W) from its ACS block, on the k-space's device (a GPU
    makes it ~free; 320², 16 coils: a few s on 2 CPU cores, sigpy's numpy version ~45 s). sigpy's `EspiritCalib`
    algorithm (calibration matrix → SVD → kernels whose singular value exceeds `thresh` of the largest → per
    pixel, the top eigenvector of Σ_k a_k a_kᴴ over the kernels' coil images a_k, phase relative to coil 0, zeroed
    where the eigenvalue is below `crop`), with three changes:
    - the calibration region is every readout row (the readout is fully sampled) × the ACS columns `acs` =
      (start, stop) (`acs_span`), the kernel at most that wide, rather than EspiritCalib's acs × acs square. With
      the 3 ACS lines of AF 8 on 64 columns that square leaves maps covering 5 % of the head (BART's ecalib also
      calibrates on a rectangle);
    - no crop by default: a cropped pixel has no map, so every SENSE-type method would return 0 there, and with a
      few ACS lines the eigenvalues fall below BART's 0.8 inside the object (on a 32² test object only 15 % kept
      it); uncropped maps are unit vectors at every pixel, which outside the object multiply an image that is ~0;
    - Σ_k a_k a_kᴴ is formed in k-space, as the kernels' coil-pair cross-correlations ((2k-1)² taps, one FFT per
      coil pair, not one per kernel and coil), and its top eigenvector is exact (`eigh`), where EspiritCalib runs
      100 power iterations (tests/test_measurement.py checks both against EspiritCalib). Deterministic."""
    n_coils, height, width = kspace.shape
    start, stop = acs
    if stop - start < 2:
        raise ValueError(f"ESPIRiT needs at least 2 fully sampled centre columns, the mask has {stop - start}")
    kh, kw = min(kernel, height), min(kernel, stop - start)
    kspace = kspace.to(torch.complex64)
    blocks = kspace[:, :, start:stop].unfold(1, kh, 1).unfold(2, kw, 1)  # (C, rows, cols, kh, kw)
    calib = blocks.permute(1, 2, 0, 3, 4).reshape(-1, n_coils * kh * kw)
    _, s, vh = torch.linalg.svd(calib, full_matrices=False)
    kernels = vh[s > thresh * s.max()].reshape(-1, n_coils * kh * kw)
    # q[(c, u), (d, v)] = Σ_k kernel_k[c, u] · conj(kernel_k[d, v]); the cross-correlation of coils c and d at the
    # k-space shift Δ = u - v sums q over the (u, v) pairs with that shift.
    q = (kernels.T @ kernels.conj()).reshape(n_coils, kh, kw, n_coils, kh, kw)
    xcorr = torch.zeros(n_coils, n_coils, height, width, dtype=kspace.dtype, device=kspace.device)
    top, left = height // 2 - (kh - 1), width // 2 - (kw - 1)  # shift 0 at the k-space centre
    for v1 in range(kh):
        for v2 in range(kw):
            row, col = top + kh - 1 - v1, left + kw - 1 - v2
            xcorr[:, :, row:row + kh, col:col + kw] += q[:, :, :, :, v1, v2].permute(0, 3, 1, 2)
    # the per-pixel Σ_k a_k a_kᴴ, scaled as EspiritCalib's (the kernels' images at √(HW)/(kh·kw) each)
    aha = (ifft2(xcorr) * ((height * width) ** 0.5 / (kh * kw))).permute(2, 3, 0, 1)
    eig, vec = torch.linalg.eigh(aha)
    maps, eig = vec[..., -1].permute(2, 0, 1), eig[..., -1]
    maps = maps * (maps[0].conj() / maps[0].abs().clamp_min(torch.finfo(torch.float32).tiny))
    return maps * (eig > crop)


def acs_phase(k_u: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, acs: list[tuple[int, int]]) -> torch.Tensor:
    """The phase given to a magnitude image under multicoil: that of the ACS-only SENSE image Sᴴ·F⁻¹(k_u·M_acs),
    a low-resolution image whose phase is smooth like the object's (B, 1, H, W), unit modulus (1 where it is 0)."""
    acs_mask = torch.zeros_like(mask)
    for b, (start, stop) in enumerate(acs):
        acs_mask[b, ..., start:stop] = 1
    image = (maps.conj() * ifft2(k_u * acs_mask)).sum(dim=1, keepdim=True)
    modulus = image.abs()
    return torch.where(modulus > 0, image / modulus.clamp_min(torch.finfo(modulus.dtype).tiny),
                       torch.ones_like(image))


def multicoil_measurement(coil_images: torch.Tensor, mask: torch.Tensor, acquired: torch.Tensor | None = None,
                          width: int | None = None) -> Measurement:
    """The multicoil instance from fully sampled coil images (B, C, H, W_raw): k_u = F(coils)·M, the zero-filled
    RSS on the image grid (`width` columns, default W_raw), ESPIRiT maps from each slice's own ACS columns of k_u
    (`espirit_maps`) and the ACS phase. `acquired` (B, 1, 1, W_raw), the columns the raw data holds
    (`ldpm.data.coils`), multiplies the mask: no mask samples a padding column. Everything moves to the mask's
    device."""
    if acquired is not None:
        mask = mask * acquired.to(mask.device)
    return Measurement(fft2(coil_images.to(mask.device)) * mask, mask, estimate=sense_estimate, width=width)


def sense_estimate(k_u: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ESPIRiT maps from each slice's own ACS columns, the ACS phase): the multicoil operator's S and P."""
    acs = [acs_span(m.cpu().numpy()) for m in mask]
    maps = torch.stack([espirit_maps(k, n) for k, n in zip(k_u, acs)])
    return maps, acs_phase(k_u, mask, maps, acs)


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
    """`run(measurement, **kw)` fed the measurement under `rule` (`input_scale`), its output multiplied back into
    the units of the stored slices, which every metric compares against. Under "gt_max", `run` itself."""
    if _checked(rule) == "gt_max":
        return run

    def scaled(meas: Measurement, **kwargs) -> torch.Tensor:
        s = input_scale(meas.x_u, rule)
        return run(meas.scaled(s), **kwargs) * s

    return scaled
