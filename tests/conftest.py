"""Shared fixtures: one small embedded dataset per test session, indexed and preprocessed once."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL = dict(n_subjects=6, volumes_per_subject=2, slices_per_volume=5, n_coils=3, matrix=64, ood_subjects=1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory) -> Path:
    from ldpm.data.embedded import generate_dataset

    out = tmp_path_factory.mktemp("raw")
    generate_dataset(out, seed=0, **SMALL)
    return out


@pytest.fixture(scope="session")
def datasets(raw_dir) -> dict:
    return {"brain": {"role": "in_distribution", "paths": [str(raw_dir / "brain")]},
            "ood": {"role": "ood", "paths": [str(raw_dir / "ood")]}}


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, datasets) -> Path:
    """index.csv and {train,val,test}.{h5,csv} for the small dataset, 32x32 images."""
    from ldpm.data.preprocess import build_index, preprocess

    out = tmp_path_factory.mktemp("data")
    build_index(datasets, [], out / "index.csv")
    preprocess(out / "index.csv", out, crop_size=64, image_size=32, drop_last_slices=3,
               val_fraction=0.2, test_fraction=0.34, seed=0)
    return out
