"""The measurement operator (`ldpm.physics.Measurement`): its two instances, magnitude (the paper's) and multicoil,
checked against independent numpy computations."""

import numpy as np
import pytest
import torch

from ldpm.data.masks import sample_mask
from ldpm.physics import (Measurement, acs_columns, acs_phase, acs_span, espirit_maps, fft2, ifft2, measure,
                          multicoil_measurement)

H = W = 32


def np_fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def np_ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def crandn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))


def masks(b=2, width=W, af=4, cf=0.16):
    return torch.from_numpy(np.stack([sample_mask(width, af, cf, seed=i) for i in range(b)])).float()[:, None, None]


def smooth_maps(b=2, coils=4, seed=0):
    """Smooth coil maps normalised to Σ|S|² = 1 at every pixel (as ESPIRiT's are inside the object)."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(b):
        coil = [np.exp(-((yy - np.cos(a)) ** 2 + (xx - np.sin(a)) ** 2)) * np.exp(1j * rng.uniform(-1, 1) * (xx + yy))
                for a in np.linspace(0, 2 * np.pi, coils, endpoint=False)]
        coil = np.stack(coil)
        maps.append(coil / np.sqrt((np.abs(coil) ** 2).sum(0)))
    return torch.from_numpy(np.stack(maps).astype(np.complex64))


def multicoil(b=2, coils=4, seed=0):
    maps = smooth_maps(b, coils, seed)
    phase = torch.exp(1j * 0.5 * crandn(b, 1, H, W, seed=seed + 1).real)
    return Measurement(crandn(b, coils, H, W, seed=seed + 2) * masks(b), masks(b), maps=maps, phase=phase)


def inner(a, b):
    return complex(torch.vdot(a.flatten().to(torch.complex128), b.flatten().to(torch.complex128)))


@pytest.mark.parametrize("instance", ["magnitude", "multicoil"])
def test_adjoint_is_the_adjoint_of_the_forward_model(instance):
    """⟨A x, y⟩ = ⟨x, Aᴴ y⟩ for random complex x, y."""
    meas = multicoil() if instance == "multicoil" else measure(torch.rand(2, 1, H, W), masks())
    x, y = crandn(2, 1, H, W, seed=5), crandn(*meas.k_u.shape, seed=6)
    lhs, rhs = inner(meas.forward(x), y), inner(x, meas.adjoint(y))
    assert abs(lhs - rhs) < 1e-4 * abs(lhs)
    assert abs(lhs) > 1  # not trivially 0 = 0


@pytest.mark.parametrize("raw", [40, 41, 24, 23])
def test_an_image_grid_off_the_raw_width_is_the_raw_grids_centre(raw):
    """Raw k-space wider (fastMRI knee: 368 for a 320 image) or narrower (some brain files) than the image grid, even
    and odd differences: the image is the raw grid's centre columns at fastMRI's centre-crop offset. Written out in
    numpy: A(m) = M·F(S·P·pad(m)), x_u = crop(RSS(F⁻¹ k_u)); the adjoint is the adjoint; DC with consistent data
    gives the image back."""
    rng = np.random.default_rng(raw)
    coils = 3
    maps = rng.standard_normal((1, coils, H, raw)) + 1j * rng.standard_normal((1, coils, H, raw))
    maps /= np.sqrt((np.abs(maps) ** 2).sum(1, keepdims=True))
    phase = np.exp(1j * rng.uniform(-1, 1, (1, 1, H, raw)))
    mask = (rng.random((1, 1, 1, raw)) < 0.4).astype(np.float32)
    k_u = (rng.standard_normal((1, coils, H, raw)) + 1j * rng.standard_normal((1, coils, H, raw))) * mask
    meas = Measurement(torch.from_numpy(k_u.astype(np.complex64)), torch.from_numpy(mask),
                       maps=torch.from_numpy(maps.astype(np.complex64)),
                       phase=torch.from_numpy(phase.astype(np.complex64)), width=W)

    def np_to_raw(m):  # numpy's pad / slice at fastMRI's offset (W - w) // 2
        if raw >= W:
            return np.pad(m, [(0, 0)] * 3 + [((raw - W) // 2, raw - W - (raw - W) // 2)])
        return m[..., (W - raw) // 2:(W - raw) // 2 + raw]

    def np_to_grid(r):
        if raw >= W:
            return r[..., (raw - W) // 2:(raw - W) // 2 + W]
        return np.pad(r, [(0, 0)] * 3 + [((W - raw) // 2, W - raw - (W - raw) // 2)])

    m = rng.random((1, 1, H, W)).astype(np.float32)
    np.testing.assert_allclose(meas.forward(torch.from_numpy(m)).numpy(),
                               np_fft2c(maps * phase * np_to_raw(m)) * mask, atol=1e-5)
    np.testing.assert_allclose(meas.x_u.numpy(), np_to_grid(np.sqrt((np.abs(np_ifft2c(k_u)) ** 2).sum(1, keepdims=True))),
                               rtol=1e-5, atol=1e-5)
    assert meas.x_u.shape == (1, 1, H, W)
    x, y = crandn(1, 1, H, W, seed=7), crandn(1, coils, H, raw, seed=8)
    lhs, rhs = inner(meas.forward(x), y), inner(x, meas.adjoint(y))
    assert abs(lhs - rhs) < 1e-4 * abs(lhs) and abs(lhs) > 1
    inside = torch.from_numpy(np_to_grid(np_to_raw(np.ones((1, 1, H, W), np.float32))))  # the columns both grids hold
    consistent = Measurement(meas.forward(torch.from_numpy(m)), meas.mask, maps=meas.maps, phase=meas.phase, width=W)
    torch.testing.assert_close(consistent.data_consistency(torch.from_numpy(m)), torch.from_numpy(m * inside.numpy())
                               .to(torch.complex64), atol=1e-5, rtol=0)


def test_the_forward_model_is_mask_fft_maps_phase_written_out():
    """A(m) = M·F(S·P·m) per coil, with numpy's FFT."""
    meas = multicoil()
    m = torch.rand(2, 1, H, W)
    expected = np_fft2c(meas.maps.numpy() * (meas.phase.numpy() * m.numpy())) * meas.mask.numpy()
    np.testing.assert_allclose(meas.forward(m).numpy(), expected, atol=1e-5)


def test_magnitude_dc_restores_the_sampled_kspace_and_keeps_the_rest():
    x, z, mask = torch.rand(2, 1, H, W), torch.rand(2, 1, H, W), masks()
    meas = measure(x, mask)
    out = np_fft2c(meas.data_consistency(z).numpy())
    m = mask.numpy().astype(bool)[:, :, 0, :]
    k_x, k_z = np_fft2c(x.numpy()), np_fft2c(z.numpy())
    np.testing.assert_allclose(out.transpose(0, 1, 3, 2)[np.broadcast_to(m[..., None], (2, 1, W, H))],
                               k_x.transpose(0, 1, 3, 2)[np.broadcast_to(m[..., None], (2, 1, W, H))], atol=1e-5)
    unsampled = ~np.broadcast_to(m[:, :, None, :], out.shape)
    np.testing.assert_allclose(out[unsampled], k_z[unsampled], atol=1e-5)


def test_multicoil_dc_restores_the_sampled_coil_kspace():
    """With consistent data (k_u = A(x)), DC of any image puts the measured coil k-space on the sampled entries
    before combining, so DC(x) = x (Sᴴ S = 1 with Σ|S|² = 1), and DC lowers the k-space residual of other images."""
    meas0 = multicoil()
    x = torch.rand(2, 1, H, W) + 0.5
    meas = Measurement(meas0.forward(x), meas0.mask, maps=meas0.maps, phase=meas0.phase)
    torch.testing.assert_close(meas.data_consistency(x), x.to(torch.complex64), atol=1e-5, rtol=0)
    z = torch.rand(2, 1, H, W)
    # the coil k-space DC builds, then combines: sampled entries are k_u's
    coil_k = fft2(meas.to_coils(z)) * (1 - meas.mask) + meas.k_u * meas.mask
    sampled = torch.broadcast_to(meas.mask.bool(), coil_k.shape)
    assert torch.equal(coil_k[sampled], meas.k_u[sampled])
    assert (meas.residual(meas.data_consistency(z)).sum(1) < meas.residual(z).sum(1)).all()


def test_one_coil_with_maps_of_ones_and_zero_phase_is_the_magnitude_instance_exactly():
    """The multicoil code path with one coil, a map of ones and zero phase reproduces the single-coil formulas
    F⁻¹{F(x)(1−M) + k_u M}, |F⁻¹ k_u| and ‖(F(x) − k_u)M‖² bit for bit."""
    x, z, mask = torch.rand(3, 1, H, W), torch.rand(3, 1, H, W), masks(3)
    k_u = fft2(x) * mask
    magnitude = measure(x, mask)
    ones = Measurement(k_u, mask, maps=torch.ones(3, 1, H, W, dtype=torch.complex64),
                       phase=torch.ones(3, 1, H, W, dtype=torch.complex64))
    formula_dc = ifft2(fft2(z) * (1 - mask) + k_u * mask)
    for meas in (magnitude, ones):
        assert torch.equal(meas.k_u, k_u)
        assert torch.equal(meas.x_u, ifft2(k_u).abs())
        assert torch.equal(meas.data_consistency(z), formula_dc)
        assert torch.equal(meas.residual(z), ((fft2(z) - k_u) * mask).abs().pow(2).sum(dim=(-2, -1)))


def test_multicoil_zero_filled_image_is_the_rss_of_the_masked_coil_images():
    coils = crandn(2, 4, H, W, seed=3).numpy()
    mask = masks()
    meas = Measurement(torch.from_numpy(np_fft2c(coils)) * mask, mask)
    expected = np.sqrt((np.abs(np_ifft2c(np_fft2c(coils) * mask.numpy())) ** 2).sum(1, keepdims=True))
    np.testing.assert_allclose(meas.x_u.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width, cf", [(64, 0.04), (64, 0.08), (320, 0.04), (368, 0.08)])
def test_acs_span_is_fastmris_low_frequency_block(width, cf):
    """fastMRI's masks sample round(W·cf) centre columns from (W − n + 1) // 2; a random line beside them extends
    the fully sampled run (calibration data too); without such neighbours the span is exactly fastMRI's block."""
    n = round(width * cf)
    start = (width - n + 1) // 2
    for seed in range(8):
        mask = sample_mask(width, 8, cf, seed=seed)
        lo, hi = acs_span(mask)
        assert lo <= start and hi >= start + n and mask[lo:hi].all()
        mask[start - 1] = mask[start + n] = False
        assert acs_span(mask) == (start, start + n) and acs_columns(mask) == n


def test_espirit_maps_recover_smooth_coil_maps_from_few_acs_lines():
    """Coil images S·x with known smooth maps, AF 8 with 3 ACS lines on 32 columns: the estimated maps span the same
    one-dimensional coil subspace (|⟨Ŝ, S⟩| ≈ 1 per pixel) inside the object and have Σ|Ŝ|² = 1 (no crop)."""
    maps = smooth_maps(1, 4)[0].numpy()
    yy, xx = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    obj = (xx ** 2 / 0.7 + yy ** 2 / 0.9 < 0.8) * (1.0 + 0.3 * np.cos(3 * xx))
    kspace = np_fft2c(maps * obj).astype(np.complex64)
    mask = sample_mask(W, 8, 0.1, seed=0)
    acs = acs_span(mask)
    assert acs[1] - acs[0] == 3
    est = espirit_maps(torch.from_numpy(kspace * mask), acs).numpy()
    np.testing.assert_allclose((np.abs(est) ** 2).sum(0), 1, atol=1e-3)
    agreement = np.abs((np.conj(est) * maps).sum(0))[obj > 0]
    assert np.median(agreement) > 0.99 and np.percentile(agreement, 10) > 0.9


def test_espirit_maps_equal_sigpys_espiritcalib_where_their_calibration_regions_agree():
    """With every column an ACS column on a square grid, the calibration rectangle is EspiritCalib's square: the maps
    agree with sigpy's (an independent implementation: per-kernel coil images, 100 power iterations) to 1e-3 at
    every pixel, and their eigenvalue mask (crop) too. Coil images of a noisy object, 8 coils."""
    from sigpy.mri.app import EspiritCalib

    rng = np.random.default_rng(3)
    n = 24
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    coils = np.stack([np.exp(-((yy - np.cos(a)) ** 2 + (xx - np.sin(a)) ** 2) + 1j * rng.uniform(-1, 1) * (xx + yy))
                      for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)])
    obj = (xx ** 2 / 0.7 + yy ** 2 / 0.9 < 0.8) * (1.0 + 0.3 * np.cos(3 * xx))
    noise = 0.01 * (rng.standard_normal(coils.shape) + 1j * rng.standard_normal(coils.shape))
    kspace = np_fft2c(coils * obj + noise).astype(np.complex64)
    for crop in (0.0, 0.9):
        ref = EspiritCalib(kspace, calib_width=n, thresh=0.02, kernel_width=6, crop=crop, show_pbar=False).run()
        est = espirit_maps(torch.from_numpy(kspace), (0, n), crop=crop).numpy()
        assert 0 < (np.abs(ref[0]) > 0).mean() <= 1
        np.testing.assert_array_equal(np.abs(est[0]) > 0, np.abs(ref[0]) > 0)
        np.testing.assert_allclose(est, ref, atol=1e-3)


def test_multicoil_measurement_sense_combines_to_the_object():
    """From fully sampled coil images with smooth maps: the ESPIRiT maps and ACS phase give back the object's
    magnitude through Aᴴ of the fully sampled k-space (a check of maps and phase together)."""
    maps = smooth_maps(1, 4)[0].numpy()
    yy, xx = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    obj = (xx ** 2 / 0.7 + yy ** 2 / 0.9 < 0.8) * (1.0 + 0.3 * np.cos(3 * xx)) * np.exp(0.4j * xx)
    coils = torch.from_numpy((maps * obj).astype(np.complex64))[None]
    mask = torch.from_numpy(sample_mask(W, 4, 0.16, seed=1)).float()[None, None, None]
    meas = multicoil_measurement(coils, mask)
    full = Measurement(fft2(coils), torch.ones_like(mask), maps=meas.maps, phase=meas.phase)
    image = full.adjoint(fft2(coils))[0, 0].numpy()
    inside = np.abs(obj) > 0
    error = np.abs(np.abs(image[inside]) - np.abs(obj[inside])) / np.abs(obj[inside])
    assert np.median(error) < 0.01 and np.percentile(error, 90) < 0.05  # the object's sharp edge: a few % off
    # the phase estimate removes most of the object's phase: the combined image is nearly real and positive
    assert np.median(np.abs(np.angle(image[inside]))) < 0.1
    assert acs_phase(meas.k_u, mask, meas.maps, [acs_span(mask[0].numpy())]).abs().sub(1).abs().max() < 1e-5


def test_maps_are_estimated_once_on_first_use_and_per_row_alike(monkeypatch):
    """The multicoil measurement estimates maps and phase only when a method asks (image-to-image methods never
    do), once, and a part of the batch gets the rows' own estimate whether it is taken before or after."""
    import ldpm.physics as physics

    calls = []
    real = physics.espirit_maps
    monkeypatch.setattr(physics, "espirit_maps", lambda *a, **k: calls.append(1) or real(*a, **k))
    coils = (smooth_maps(3, 4) * (torch.rand(3, 1, H, W) + 0.5)).to(torch.complex64)
    meas = multicoil_measurement(coils, masks(3))
    meas.x_u, meas.k_u, meas.scaled(torch.full((3, 1, 1, 1), 2.0)).x_u
    assert calls == []
    early = meas[1:].maps
    assert len(calls) == 2
    both = meas.maps, meas.phase
    assert len(calls) == 5
    assert torch.equal(early, both[0][1:]) and torch.equal(meas[1:].phase, both[1][1:])
    assert torch.equal(meas.scaled(torch.full((3, 1, 1, 1), 2.0)).maps, both[0]) and len(calls) == 5
