"""Embedded fastMRI-format dataset: ISMRMRD header round trip, fastMRI compatibility, determinism, contrasts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import fastmri
import h5py
import numpy as np
import pytest
import torch
from fastmri.data.transforms import center_crop, to_tensor

from ldpm.data.embedded import (ACQUISITIONS, CLASSES, FIELD_STRENGTHS_T, Subject, generate_dataset, protocol_for,
                                tissue_signals)
from ldpm.data.ismrmrd import acquired_columns, build_header, parse_header

GEN = dict(n_subjects=3, volumes_per_subject=2, slices_per_volume=2, n_coils=3, matrix=64, ood_subjects=2)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.h5"))}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embedded")
    paths = generate_dataset(out, seed=0, **GEN)
    assert len(paths) == GEN["n_subjects"] * GEN["volumes_per_subject"] + GEN["ood_subjects"]
    return out


def _volumes(root: Path) -> list[dict]:
    rows = []
    for path in sorted(root.rglob("*.h5")):
        with h5py.File(path) as fh:
            rows.append({"path": path, "set": path.parent.name, **dict(fh.attrs),
                         **parse_header(fh["ismrmrd_header"][()])})
    return rows


# ------------------------------------------------------------------------------------------------ header
def test_header_round_trip():
    xml = build_header(field_strength_T=2.89362, system_model="Prisma_fit", system_vendor="SIEMENS",
                       encoded_shape=(640, 320), recon_shape=(320, 320), n_coils=16)
    assert 'xmlns="http://www.ismrm.org/ISMRMRD"' in xml
    for parsed in (parse_header(xml), parse_header(xml.encode())):
        assert parsed == {"field_strength_T": 2.89362, "system_model": "Prisma_fit", "system_vendor": "SIEMENS",
                          "n_coils": 16, "encoded_shape": (640, 320), "recon_shape": (320, 320),
                          "pe_limits": (160, 319)}
        assert acquired_columns(parsed, 320) == (0, 320)  # fastMRI's padding_left 0, padding_right 320


def test_header_has_what_fastmri_reads():
    import xml.etree.ElementTree as ET

    from fastmri.data.mri_data import et_query

    root = ET.fromstring(build_header(field_strength_T=1.494, system_model="Aera", system_vendor="SIEMENS",
                                      encoded_shape=(128, 64), recon_shape=(64, 64), n_coils=4))
    enc, rec = ["encoding", "encodedSpace", "matrixSize"], ["encoding", "reconSpace", "matrixSize"]
    assert [et_query(root, enc + [a]) for a in "xyz"] == ["128", "64", "1"]
    assert [et_query(root, rec + [a]) for a in "xyz"] == ["64", "64", "1"]
    lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    assert int(et_query(root, lims + ["center"])) == 32 and int(et_query(root, lims + ["maximum"])) == 63
    assert et_query(root, ["encoding", "trajectory"]) == "cartesian"


def test_missing_field_strength_is_named():
    xml = build_header(field_strength_T=1.494, system_model="Avanto", system_vendor="SIEMENS",
                       encoded_shape=(128, 64), recon_shape=(64, 64), n_coils=4)
    start, end = xml.index("<systemFieldStrength_T>"), xml.index("</systemFieldStrength_T>")
    broken = xml[:start] + xml[end + len("</systemFieldStrength_T>"):]
    with pytest.raises(ValueError, match="systemFieldStrength_T"):
        parse_header(broken)
    with pytest.raises(ValueError, match="not valid XML"):
        parse_header("<ismrmrdHeader>")


# ------------------------------------------------------------------------------------------------ files
def test_layout_shapes_and_attrs(generated):
    n, s, c = GEN["matrix"], GEN["slices_per_volume"], GEN["n_coils"]
    for vol in _volumes(generated):
        with h5py.File(vol["path"]) as fh:
            assert fh["kspace"].dtype == np.complex64 and fh["kspace"].shape == (s, c, 2 * n, n)
            assert fh["reconstruction_rss"].dtype == np.float32 and fh["reconstruction_rss"].shape == (s, n, n)
            rss = fh["reconstruction_rss"][()]
        assert vol["acquisition"] in ACQUISITIONS
        assert vol["max"] == pytest.approx(float(rss.max()))
        assert vol["norm"] == pytest.approx(float(np.linalg.norm(rss)))
        assert vol["encoded_shape"] == (2 * n, n) and vol["recon_shape"] == (n, n) and vol["n_coils"] == c
        assert vol["system_vendor"] == "SIEMENS"


def test_fastmri_slice_dataset_reads_the_files(generated):
    n, s, c = GEN["matrix"], GEN["slices_per_volume"], GEN["n_coils"]
    for subset in ("brain", "ood"):
        ds = fastmri.data.SliceDataset(root=generated / subset, challenge="multicoil", transform=None)
        n_files = len(list((generated / subset).glob("*.h5")))
        assert len(ds) == n_files * s
        kspace, mask, target, attrs, fname, slice_num = ds[len(ds) - 1]
        assert kspace.shape == (c, 2 * n, n) and kspace.dtype == np.complex64
        assert target.shape == (n, n)
        assert attrs["encoding_size"] == (2 * n, n, 1) and attrs["recon_size"] == (n, n, 1)
        assert (attrs["padding_left"], attrs["padding_right"]) == (0, n)
        assert "patient_id" in attrs and "acquisition" in attrs


def test_reconstruction_rss_is_fastmri_rss(generated):
    n = GEN["matrix"]
    for path in sorted(generated.rglob("*.h5"))[:3]:
        with h5py.File(path) as fh:
            kspace, stored = fh["kspace"][()], fh["reconstruction_rss"][()]
        coil_images = fastmri.ifft2c(to_tensor(kspace))
        expected = center_crop(fastmri.rss(fastmri.complex_abs(coil_images), dim=1), (n, n))
        torch.testing.assert_close(torch.from_numpy(stored), expected.float(), rtol=1e-5, atol=1e-9)


def test_same_seed_same_bytes_other_seed_differs(generated, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    generate_dataset(again, seed=0, **GEN)
    generate_dataset(other, seed=1, **GEN)
    reference = _digests(generated)
    assert _digests(again) == reference
    assert not set(_digests(other).values()) & set(reference.values())


def test_fields_acquisitions_and_subjects(generated):
    vols = _volumes(generated)
    brain = [v for v in vols if v["set"] == "brain"]
    ood = [v for v in vols if v["set"] == "ood"]
    assert {v["field_strength_T"] for v in brain} == set(FIELD_STRENGTHS_T)
    assert len({v["acquisition"] for v in brain}) >= 5  # 6 volumes cycle through all five
    assert {v["system_model"] for v in brain} <= {"Avanto", "Aera", "Skyra", "Prisma_fit", "Biograph_mMR"}
    by_patient: dict[str, set] = {}
    for v in brain:  # one scanner per subject, volumes_per_subject volumes each
        by_patient.setdefault(v["patient_id"], set()).add((v["field_strength_T"], v["system_model"]))
    assert len(by_patient) == GEN["n_subjects"]
    assert all(len(s) == 1 for s in by_patient.values())
    assert sorted(sum(v["patient_id"] == p for v in brain) for p in by_patient) == [GEN["volumes_per_subject"]] * 3
    assert ood and all(v["patient_id"].startswith("ood") and v["acquisition"] == "AXT1" for v in ood)
    assert not {v["patient_id"] for v in ood} & set(by_patient)
    assert len({v["path"].stem for v in vols}) == len(vols)  # names unique across brain and ood


def test_noise_falls_with_field_strength(generated):
    """Noise std relative to the head signal, from the oversampled (empty) readout rows: lower at 3 T."""
    ratio = {f: [] for f in FIELD_STRENGTHS_T}
    n = GEN["matrix"]
    for vol in _volumes(generated / "brain"):
        with h5py.File(vol["path"]) as fh:
            images = fastmri.ifft2c(to_tensor(fh["kspace"][()]))
            rss = fh["reconstruction_rss"][()]
        noise = images[..., : n // 4, :, :].std().item()  # top rows: outside the recon FOV, noise only
        head = rss[rss > 0.15 * np.percentile(rss, 99)]
        ratio[vol["field_strength_T"]].append(noise / np.median(head))
    assert np.mean(ratio[1.494]) > 1.3 * np.mean(ratio[2.89362])


# ------------------------------------------------------------------------------------------------ contrasts
@pytest.mark.parametrize("field_t", FIELD_STRENGTHS_T)
def test_tissue_contrasts_follow_the_sequences(field_t):
    subject = Subject(index=0, patient_id="x", anatomy="mni", field_strength_T=field_t, system_model="x",
                      rotation_deg=0.0, scale=(1.0, 1.0), shift_mm=(0.0, 0.0), warp_mm=np.zeros((2, 2, 2)),
                      slab_start_mm=0.0, slab_gap_mm=5.0, shells_mm={})
    sig = {acq: dict(zip(CLASSES, tissue_signals(protocol_for(acq, field_t), subject))) for acq in ACQUISITIONS}
    for acq in ("AXT1", "AXT1PRE", "AXT1POST"):  # T1-weighted: WM > GM > CSF (dark), fat bright
        assert sig[acq]["wm"] > sig[acq]["gm"] > sig[acq]["csf"] and sig[acq]["fat"] > sig[acq]["wm"]
    assert sig["AXT2"]["csf"] > sig["AXT2"]["gm"] > sig["AXT2"]["wm"]  # T2: CSF bright
    assert sig["AXFLAIR"]["gm"] > sig["AXFLAIR"]["wm"] > 10 * sig["AXFLAIR"]["csf"]  # FLAIR: CSF nulled
    for tissue in ("blood", "dura", "choroid"):  # gadolinium shortens T1: enhancement after contrast
        assert sig["AXT1POST"][tissue] > 1.5 * sig["AXT1PRE"][tissue]
    assert sig["AXT1POST"]["wm"] == sig["AXT1PRE"]["wm"]
