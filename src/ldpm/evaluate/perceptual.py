"""Perceptual metrics of Table I: LPIPS (AlexNet, v0.1 linear heads), rFID and KID (torch-fidelity, Inception-v3).

Backbone weights come only from local files: `evaluation.weights_dir` (default `weights/`) or the torch hub cache
(`$TORCH_HOME/hub/checkpoints`). Nothing is downloaded at run time and no metric is ever computed with a random
backbone: when a file is absent the metric is reported as n/a with a note naming the file and how to get it
(`ldpm weights fetch` on a machine with internet). A present file with the wrong sha256 is an error.

`lpips.LPIPS(pretrained=True)` would take its linear heads from the lpips wheel (fine: they ship with it) but the
AlexNet trunk from torchvision's download cache; so the net is built with a random trunk that is then replaced,
strictly, by the local file. torch-fidelity unpickles a given weights path (`weights_only=False`); we load the
state dict with `weights_only=True` and hand it over instead.

Images: each slice is divided by its ground-truth volume maximum (the fastMRI data range), clipped to [0, 1] and
replicated to 3 channels; LPIPS sees [-1, 1], the FID/KID extractor uint8 (Inception resizes to 299 itself).
rFID / KID compare the reconstructions of one method with the ground truths of the same test slices.
"""

from __future__ import annotations

import logging
import os
import urllib.request
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import numpy as np

from ldpm import LdpmError
from ldpm.config import STAND_IN_MANIFEST
from ldpm.io import atomic_output, sha256_file

if TYPE_CHECKING:  # torch is imported where it is used: the Snakefile reads WEIGHTS at DAG time
    import pandas as pd
    import torch

log = logging.getLogger("ldpm.perceptual")

INCEPTION = "inception-v3-compat"


@dataclass(frozen=True)
class WeightFile:
    names: tuple[str, ...]  # accepted file names; `ldpm weights fetch` writes the first
    url: str
    sha256: str  # full hash, or the 8-hex prefix that torch.hub's own check uses where no full hash is pinned
    metrics: str


WEIGHTS = {
    # torchvision AlexNet_Weights.IMAGENET1K_V1, the trunk lpips uses. The file name carries its sha256 prefix.
    "alexnet": WeightFile(("alexnet-owt-7be5be79.pth",), "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                          "7be5be79", "LPIPS"),
    # torch-fidelity's Inception-v3 port of the TF FID graph; pytorch-fid ships the same bytes as pt_inception-….
    "inception": WeightFile(("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth"),
                            "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                            "weights-inception-2015-12-05-6726825d.pth",
                            "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2", "rFID and KID"),
}
# lpips 0.1.x wheel: weights/v0.1/alex.pth (the five linear heads).
LPIPS_LINEAR_SHA256 = "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"


def hub_checkpoints() -> Path:
    """torch.hub.get_dir() / checkpoints, resolved the way torch does, without importing torch."""
    torch_home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def search_dirs(weights_dir: str | Path, use_hub_cache: bool = True) -> list[Path]:
    return [Path(weights_dir)] + ([hub_checkpoints()] if use_hub_cache else [])


def present_weights(weights_dir: str | Path, use_hub_cache: bool = True) -> list[str]:
    """Backbone files present now (no hash check): the perceptual rule lists them as inputs, so that adding
    one later reruns it."""
    return [str(d / n) for spec in WEIGHTS.values() for d in search_dirs(weights_dir, use_hub_cache)
            for n in spec.names if (d / n).is_file()]


def check_sha256(path: Path, expected: str, fix: str) -> None:
    digest = sha256_file(path)
    if not digest.startswith(expected):
        raise LdpmError(f"{path}: sha256 {digest[:16]}… is not the pinned {expected[:16]}…; {fix}")


@lru_cache(maxsize=None)  # asked by find_weight and again by load_backbones: hash a ~100 MB backbone once
def is_stand_in(path: Path) -> bool:
    """True for a file that `ldpm rehearsal-inputs` wrote (random weights in the real key layout): the STAND-IN.json
    beside it lists its name with its exact sha256. Such a file is used only with a STAND-IN note in every table."""
    import json

    manifest = path.parent / STAND_IN_MANIFEST
    if not manifest.is_file():
        return False
    listed = json.loads(manifest.read_text()).get("files", {}).get(path.name)
    return listed is not None and listed == sha256_file(path)


def stand_in_note(key: str, path: Path) -> str:
    return (f"{WEIGHTS[key].metrics}: STAND-IN backbone {path} (random weights from `ldpm rehearsal-inputs`); these "
            f"values only show that the code path runs and are not results")


def find_weight(key: str, weights_dir: str | Path, use_hub_cache: bool = True) -> Path | None:
    """The first local copy of WEIGHTS[key] (sha256 checked, or a listed stand-in), or None when there is none."""
    spec = WEIGHTS[key]
    for directory in search_dirs(weights_dir, use_hub_cache):
        for name in spec.names:
            path = directory / name
            if path.is_file():
                if not is_stand_in(path):
                    check_sha256(path, spec.sha256, f"delete it and run `ldpm weights fetch --dir {weights_dir}`")
                return path
    return None


def missing_note(key: str, weights_dir: str | Path, use_hub_cache: bool = True) -> str:
    spec = WEIGHTS[key]
    where = " or ".join(f"{d}/" for d in search_dirs(weights_dir, use_hub_cache))
    return (f"{spec.metrics} n/a: {spec.names[0]} not found in {where}; on a machine with internet run "
            f"`ldpm weights fetch --dir {weights_dir}` (or download {spec.url}), put the file in {weights_dir}/ "
            f"and rerun")


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise LdpmError(f"{path}: not a loadable weights file ({type(exc).__name__}); delete it and fetch it "
                        f"again with `ldpm weights fetch`") from None


def build_lpips(trunk: Path):
    """LPIPS(alex, v0.1): linear heads from the lpips wheel, AlexNet trunk strictly from `trunk` (torchvision keys)."""
    import lpips

    from ldpm.provenance import note_input

    note_input(trunk)
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore")
        net = lpips.LPIPS(net="alex", version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    owner = {idx: name for name, part in net.net.named_children() for idx, _ in part.named_children()}
    state = _load_state(trunk)
    try:  # features.{i}.{weight,bias} -> slice{k}.{i}.{...}; lpips keeps features[i] under the name str(i)
        trunk_state = {f"{owner[k.split('.')[1]]}.{k.split('.', 1)[1]}": v
                       for k, v in state.items() if k.startswith("features.")}
        net.net.load_state_dict(trunk_state, strict=True)
    except (KeyError, RuntimeError) as exc:
        raise LdpmError(f"{trunk}: not torchvision AlexNet weights ({str(exc).splitlines()[0][:120]}); "
                        f"fetch {WEIGHTS['alexnet'].names[0]} with `ldpm weights fetch`") from None
    linear = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    check_sha256(linear, LPIPS_LINEAR_SHA256, "reinstall the lpips package")
    result = net.load_state_dict(_load_state(linear), strict=False)
    if result.unexpected_keys or any(k.startswith("lin") and not k.startswith("lins.") for k in result.missing_keys):
        raise LdpmError(f"{linear}: unexpected LPIPS linear heads; reinstall the lpips package")
    return net.eval().requires_grad_(False)


def build_extractor(name: str, weights: Path | None = None):
    """A torch-fidelity feature extractor: Inception from `weights`, or an extractor registered under `name`."""
    import torch_fidelity
    import torch_fidelity.feature_extractor_inceptionv3 as fe_inception
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if name == INCEPTION:
        from ldpm.provenance import note_input

        note_input(weights)
        state = _load_state(weights)
        with mock.patch.object(fe_inception, "load_state_dict_from_url", lambda *a, **k: state):
            extractor = fe_inception.FeatureExtractorInceptionV3(INCEPTION, ["2048"])
        return extractor
    cls = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if cls is None or cls.__module__.startswith("torch_fidelity"):  # built-ins would download their weights
        raise LdpmError(f"feature extractor '{name}': only '{INCEPTION}' (local weights) or an extractor "
                        f"registered with torch_fidelity.register_feature_extractor is allowed")
    layer = cls.get_default_feature_layer_for_metric("fid")
    return torch_fidelity.utils.create_feature_extractor(name, [layer], cuda=False)


@dataclass
class Backbones:
    lpips: torch.nn.Module | None = None
    extractor: torch.nn.Module | None = None  # a torch_fidelity FeatureExtractorBase; uint8 (N,3,H,W) in
    notes: dict[str, str] = field(default_factory=dict)  # metric group -> why it is n/a


def load_backbones(weights_dir: str | Path = "weights", use_hub_cache: bool = True,
                   feature_extractor: str = INCEPTION) -> Backbones:
    """Whatever local weights exist; each absent backbone leaves a note and its metrics n/a."""
    found = Backbones()
    trunk = find_weight("alexnet", weights_dir, use_hub_cache)
    if trunk is None:
        found.notes["lpips"] = missing_note("alexnet", weights_dir, use_hub_cache)
    else:
        found.lpips = build_lpips(trunk)
        if is_stand_in(trunk):
            found.notes["lpips"] = stand_in_note("alexnet", trunk)
    if feature_extractor == INCEPTION:
        inception = find_weight("inception", weights_dir, use_hub_cache)
        if inception is None:
            found.notes["fid"] = missing_note("inception", weights_dir, use_hub_cache)
        else:
            found.extractor = build_extractor(INCEPTION, inception)
            if is_stand_in(inception):
                found.notes["fid"] = stand_in_note("inception", inception)
    else:
        found.extractor = build_extractor(feature_extractor)
    for note in found.notes.values():
        log.warning("%s", note)
    return found


def to_uint8_rgb(images01: np.ndarray) -> torch.Tensor:
    """(N,H,W) in [0,1] → (N,3,H,W) uint8, the input convention of torch-fidelity extractors."""
    import torch

    x = torch.from_numpy(np.clip(images01, 0, 1) * 255).round().to(torch.uint8)
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


def extract_features(extractor, images01: np.ndarray, batch_size: int = 32, device: str = "cpu") -> torch.Tensor:
    """(N, D) float32 features of the extractor's first requested layer (Inception: the 2048-d pool)."""
    import torch
    from tqdm import tqdm

    extractor = extractor.to(device)
    x = to_uint8_rgb(images01)
    with torch.no_grad():
        feats = [extractor(x[i:i + batch_size].to(device))[0].float().cpu()
                 for i in tqdm(range(0, len(x), batch_size), desc="features", mininterval=2.0, disable=None)]
    return torch.cat(feats)


def fid_kid(real: torch.Tensor, fake: torch.Tensor, kid_subsets: int = 100, kid_subset_size: int = 1000,
            seed: int = 0) -> dict[str, float]:
    """rFID and KID (mean, std over subsets) with torch-fidelity's own estimators.

    KID subsets are drawn without replacement, so a subset as large as the set is the whole set every time and the
    std over subsets is a meaningless 0. With N images (the fewer of real and fake), subsets have
    `kid_subset_size` images when that is below N, else N // 2 (at least 2) so that they differ. Only at N = 2,
    where no smaller subset exists, kid_std is NaN.
    """
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    n = min(len(real), len(fake))
    size = kid_subset_size if kid_subset_size < n else max(2, n // 2)
    fid = fid_statistics_to_metric(fid_features_to_statistics(real), fid_features_to_statistics(fake), False)
    kid = kid_features_to_metric(real, fake, kid_subsets=kid_subsets, rng_seed=seed, verbose=False,
                                 kid_subset_size=size)
    return {"rfid": fid["frechet_inception_distance"], "kid": kid["kernel_inception_distance_mean"],
            "kid_std": kid["kernel_inception_distance_std"] if size < n else float("nan")}


def lpips_per_image(net, gt01: np.ndarray, pred01: np.ndarray, batch_size: int = 32,
                    device: str = "cpu") -> np.ndarray:
    """LPIPS of each (gt, pred) pair of (N,H,W) images in [0,1]; the net sees 3-channel [-1,1] images."""
    import torch

    net = net.to(device)
    out = []
    with torch.no_grad():
        for i in range(0, len(gt01), batch_size):
            a, b = (torch.from_numpy(np.clip(v[i:i + batch_size], 0, 1)).float()[:, None].expand(-1, 3, -1, -1)
                    .to(device) * 2 - 1 for v in (gt01, pred01))
            out.append(net(a, b).reshape(-1).cpu().numpy())
    return np.concatenate(out)


def perceptual_metrics(test_h5: str | Path, test_csv: str | Path, recons: dict[str, str | Path],
                       split_filter: dict, backbones: Backbones, out: str | Path, *, split_name: str = "main",
                       device: str = "auto", batch_size: int = 32, kid_subsets: int = 100,
                       kid_subset_size: int = 1000, seed: int = 0, training_seed: int = 0) -> pd.DataFrame:
    """One row per method over the test slices of `split_filter`: lpips, rfid, kid, kid_std (NaN + note if n/a)."""
    import pandas as pd

    from ldpm.evaluate.tables import select
    from ldpm.io import read_images, read_recon, read_table, write_table

    meta = read_table(test_csv)
    idx = select(meta, split_filter, split_name).index.to_numpy()
    rows = {m: {"method": m, "split": split_name, "n_images": len(idx)} for m in recons}
    if backbones.lpips is not None or backbones.extractor is not None:  # else all n/a, without importing torch
        from ldpm.train import resolve_device

        device = str(resolve_device(device))
        gt_all = read_images(test_h5)
        vmax = pd.Series(gt_all.reshape(len(gt_all), -1).max(1)).groupby(meta["volume"]).transform("max").to_numpy()
        gt = gt_all[idx] / vmax[idx, None, None]
        real = extract_features(backbones.extractor, gt, batch_size, device) if backbones.extractor else None
        if real is not None and len(real) < 2:
            raise LdpmError(f"config key main_split: {len(real)} test slice(s); rFID/KID need at least 2")
        for method, path in recons.items():
            pred = read_recon(path)
            if pred.shape != gt_all.shape:
                raise LdpmError(f"{path}: shape {pred.shape} != test set {gt_all.shape}; rerun its reconstruct rule")
            pred = pred[idx] / vmax[idx, None, None]
            if backbones.lpips is not None:
                rows[method]["lpips"] = float(lpips_per_image(backbones.lpips, gt, pred, batch_size, device).mean())
            if real is not None:
                fake = extract_features(backbones.extractor, pred, batch_size, device)
                rows[method].update(fid_kid(real, fake, kid_subsets, kid_subset_size, seed))
            log.info("%s: %s", method, {k: v for k, v in rows[method].items() if isinstance(v, float)})
    table = pd.DataFrame(list(rows.values()), columns=["method", "split", "n_images", "lpips", "rfid", "kid",
                                                        "kid_std", "lpips_note", "fid_note"])
    table["lpips_note"] = backbones.notes.get("lpips", "")
    table["fid_note"] = backbones.notes.get("fid", "")
    table["training_seed"] = training_seed
    write_table(table, out)
    return table


def fetch_weights(weights_dir: str | Path = "weights", keys: list[str] | None = None) -> list[Path]:
    """Download the backbone files into weights_dir and check their pinned sha256 (machines with internet only).

    Never called by the pipeline. Files already present with the right hash are kept.
    """
    weights_dir = Path(weights_dir)
    fetched = []
    for key in keys or list(WEIGHTS):
        spec = WEIGHTS[key]
        target = weights_dir / spec.names[0]
        if target.is_file():
            check_sha256(target, spec.sha256, "delete it and fetch it again")
            log.info("%s: present, sha256 ok", target)
            fetched.append(target)
            continue
        log.info("downloading %s -> %s", spec.url, target)
        with atomic_output(target) as tmp:
            try:
                with urllib.request.urlopen(spec.url, timeout=60) as response, open(tmp, "wb") as fh:
                    while block := response.read(1 << 20):
                        fh.write(block)
            except OSError as exc:
                raise LdpmError(f"{spec.url}: download failed ({exc}); check the connection or download it "
                                f"by hand into {weights_dir}/") from None
            digest = sha256_file(tmp)
            if not digest.startswith(spec.sha256):
                raise LdpmError(f"{spec.url}: downloaded sha256 {digest[:16]}… is not the pinned "
                                f"{spec.sha256[:16]}…; nothing was kept in {weights_dir}/")
        log.info("%s: sha256 %s", target, sha256_file(target))
        fetched.append(target)
    return fetched
