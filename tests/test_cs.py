"""The classical compressed-sensing rows (ldpm.baselines.cs): each solver minimises the objective its docstring
states (checked with an objective written here in numpy), λ comes from the validation choice, the choice is the
best validation PSNR, and the BART backend agrees with sigpy where `bart` is installed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import pywt
import torch

from ldpm.physics import Measurement
from ldpm.baselines import cs
from ldpm.data.masks import sample_mask

SIZE = 32


def phantom() -> np.ndarray:
    """A piecewise-constant image (what TV favours) with a smooth bump, in [0, 1]."""
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    image = 0.3 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.16) + 0.5 * ((abs(yy - 0.45) < 0.1) & (abs(xx - 0.55) < 0.15))
    return (image + 0.2 * np.exp(-((yy - 0.3) ** 2 + (xx - 0.3) ** 2) / 0.01)).astype(np.float32)


def measurement(image: np.ndarray, acceleration: int = 4, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(k_u (1, 1, H, W), mask (1, 1, 1, W)): one slice, one coil, numpy's own centred orthonormal FFT."""
    mask = sample_mask(SIZE, acceleration, 0.08, seed=seed, mask_type="random").astype(np.float32)
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho")) * mask
    return k[None, None].astype(np.complex64), mask[None, None, None]


def data_term(x: np.ndarray, k_u: np.ndarray, mask: np.ndarray) -> float:
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x), norm="ortho"))
    return 0.5 * float(np.sum(np.abs((k - k_u[0, 0]) * mask[0, 0]) ** 2))


def tv(x: np.ndarray) -> float:
    """Isotropic TV with periodic boundaries: Σ over pixels of the length of (x − x one row up, x − x one column
    left)."""
    rows, columns = x - np.roll(x, 1, axis=0), x - np.roll(x, 1, axis=1)
    return float(np.sqrt(np.abs(rows) ** 2 + np.abs(columns) ** 2).sum())


def wavelet_l1(x: np.ndarray) -> float:
    """Σ |c| over the db4 coefficients (zero-padded boundaries) of the complex image."""
    real, imag = (pywt.coeffs_to_array(pywt.wavedecn(part, "db4", mode="zero"))[0] for part in (x.real, x.imag))
    return float(np.abs(real + 1j * imag).sum())


@pytest.mark.parametrize("prior, lam, regulariser", [("tv", 0.01, tv), ("wavelet", 0.003, wavelet_l1)])
def test_each_solver_minimises_the_stated_objective(prior, lam, regulariser):
    image = phantom()
    k_u, mask = measurement(image)
    x_hat = cs.cs_reconstruct(k_u, mask, lam, prior, iterations=300)[0]

    def objective(x):
        return data_term(x, k_u, mask) + lam * regulariser(x)

    zero_filled = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k_u[0, 0]), norm="ortho"))
    assert objective(x_hat) < 0.9 * objective(zero_filled)
    rng = np.random.default_rng(0)
    for _ in range(8):  # a minimum of a convex objective: no nearby point is lower (up to the solver's tolerance)
        step = 1e-2 * (rng.standard_normal(x_hat.shape) + 1j * rng.standard_normal(x_hat.shape))
        assert objective(x_hat + step) > objective(x_hat) - 1e-4
    assert np.abs(x_hat).std() > 0.05  # not a blank image


def test_a_larger_lambda_trades_data_fidelity_for_a_smaller_prior():
    k_u, mask = measurement(phantom())
    small, large = (cs.cs_reconstruct(k_u, mask, lam, "tv", iterations=200)[0] for lam in (0.001, 0.1))
    assert tv(large) < tv(small)
    assert data_term(large, k_u, mask) > data_term(small, k_u, mask)


def test_the_reconstructor_runs_the_validation_lambda_on_the_batch(tmp_path, monkeypatch):
    """The factory reads λ from the tuning JSON (not the first grid value) and passes the batch's k-space and masks,
    with the configured iterations and backend, and returns the magnitude."""
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"chosen": {"lam": 0.0123}}))
    seen = []
    monkeypatch.setattr(cs, "cs_reconstruct", lambda k, m, lam, prior, iterations, maps, backend:
                        seen.append((k.copy(), m.copy(), lam, prior, iterations, maps, backend))
                        or np.full((len(k), *k.shape[2:]), 2j))
    run = cs.cs_wavelet({"tuned": tuned}, {"iterations": 7, "backend": "sigpy"}, torch.device("cpu"))
    k_u = torch.randn(3, 1, SIZE, SIZE, dtype=torch.complex64)
    mask = torch.zeros(3, 1, 1, SIZE)
    mask[1, ..., 5] = 1
    out = run(Measurement(k_u, mask))
    assert out.shape == (3, 1, SIZE, SIZE) and torch.all(out == 2)
    [(k, m, *settings)] = seen
    assert settings == [0.0123, "wavelet", 7, None, "sigpy"]  # magnitude: no maps (one coil, a map of ones)
    np.testing.assert_array_equal(k, k_u.numpy())
    np.testing.assert_array_equal(m, mask.numpy())


@pytest.mark.parametrize("prior", ["tv", "wavelet"])
def test_a_slice_gets_the_same_image_in_any_batch(prior):
    """Tuning and test run slices in different batches: a slice's image may not depend on its batch mates."""
    images = [phantom(), np.flipud(phantom()).copy(), np.roll(phantom(), 7, axis=1)]
    measured = [measurement(image, seed=s) for s, image in enumerate(images)]
    k_u = np.concatenate([k for k, _ in measured])
    masks = np.concatenate([m for _, m in measured])
    together = cs.cs_reconstruct(k_u, masks, 0.01, prior, iterations=50)
    for i, (k, m) in enumerate(measured):
        np.testing.assert_allclose(cs.cs_reconstruct(k, m, 0.01, prior, iterations=50)[0], together[i],
                                   rtol=0, atol=1e-6)


def test_tuning_keeps_the_lambda_with_the_best_validation_psnr(tmp_path, monkeypatch):
    """tune_cs scores every grid λ and writes the best; here a stand-in solver is exact at λ 0.01 only."""
    from test_protocols import write_test_set

    write_test_set(tmp_path, name="val", n_subjects=2, n_slices=3)

    def fake(k, m, lam, prior, iterations, maps, backend):  # exact for 0.01, the zero-filled image otherwise
        if lam == 0.01:
            return np.stack([gt_of[slice_k.tobytes()] for slice_k in k])
        return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k[:, 0], axes=(-2, -1)), norm="ortho"), axes=(-2, -1))

    gt_of = {}
    monkeypatch.setattr(cs, "cs_reconstruct", lambda *a, **kw: fake(*a, **kw))

    from ldpm import tuning

    x, masks, _, _ = tuning.validation_batch(tmp_path / "val.h5", tmp_path / "val.csv", 6, 4, 0.08, 0)
    from ldpm.physics import undersample

    k_u, _ = undersample(x, torch.stack(masks))
    gt_of.update({k_u[i].numpy().tobytes(): x[i, 0].numpy() for i in range(len(x))})
    hp = {"backend": "sigpy", "iterations": 5, "val_slices": 6, "lam": {"cs_tv": [0.1, 0.01, 0.001]}}
    record = cs.tune_cs("cs_tv", tmp_path / "val.h5", tmp_path / "val.csv", hp, 4, 0.08, 0, tmp_path / "t.json",
                        tmp_path / "t.csv")
    assert record["chosen"] == {"lam": 0.01} and json.loads((tmp_path / "t.json").read_text()) == record
    table = pd.read_csv(tmp_path / "t.csv")
    assert table["lam"].tolist() == [0.1, 0.01, 0.001] and table["chosen"].tolist() == [False, True, False]
    assert table.loc[1, "psnr"] > table.loc[0, "psnr"] + 10


def test_cfl_files_are_column_major_with_their_dimensions(tmp_path):
    array = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.complex64)
    cs.write_cfl(str(tmp_path / "a"), array)
    assert (tmp_path / "a.hdr").read_text() == "# Dimensions\n2 3\n"
    assert np.fromfile(tmp_path / "a.cfl", dtype=np.complex64).real.tolist() == [1, 4, 2, 5, 3, 6]
    np.testing.assert_array_equal(cs.read_cfl(str(tmp_path / "a")), array)


@pytest.mark.skipif(shutil.which("bart") is None, reason="`bart` is not on PATH (Debian package bart): the BART "
                    "backend is not compared with sigpy here")
def test_sigpy_reaches_barts_tv_image_in_200_iterations():
    """fastMRI's CS baseline is BART's TV (isotropic: BART's T thresholds the gradient jointly). On three slices,
    sigpy's 200 iterations land on the image BART converges to in 3000."""
    for seed, image in enumerate([phantom(), np.flipud(phantom()).copy(), np.roll(phantom(), 5, axis=1)]):
        k_u, mask = measurement(image, seed=seed + 1)
        ours = np.abs(cs.cs_reconstruct(k_u, mask, 0.01, "tv", 200)[0])
        bart = np.abs(cs.cs_reconstruct(k_u, mask, 0.01, "tv", 3000, backend="bart")[0])
        assert np.abs(ours - bart).max() < 0.02 * image.max()
        assert np.abs(ours - bart).mean() < 0.004 * image.max()


def test_an_unknown_backend_is_a_one_line_error():
    k_u, mask = measurement(phantom())
    with pytest.raises(Exception, match="cs.backend"):
        cs.cs_reconstruct(k_u, mask, 0.01, "tv", 5, backend="matlab")
