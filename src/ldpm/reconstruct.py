"""Reconstruct the test set for one (method, AF): the same simulated measurement for every method.

Each method is a `Reconstructor`: a callable measurement → image (B,1,H,W), the measurement an
`ldpm.physics.Measurement` (operator and data: k_u, mask, zero-filled x_u, coil maps, phase), built by the factory
registered for it in `ldpm.stages.RECONSTRUCTORS` from the method's weight files and hyperparameters.

One output policy for every method (`clip_output`, defined in `ldpm.physics`): negative values are set to 0, since
a magnitude image is non-negative; there is no upper bound, because the natural one (1) is the fully-sampled
volume's maximum, which a reconstruction cannot know. Methods return their raw output; every place that scores or
shows a method's output (this stage, the sampler tuning, the LDPM diagnostics, training-time validation, Fig 3)
clips it with this function.

The measurement reaches the method scaled by `data.normalise` (`ldpm.physics.scaled_method`): as stored ("gt_max",
the paper's protocol) or divided by each zero-filled slice's maximum ("input"), the output multiplied back.
"""

from __future__ import annotations

import logging
import resource
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from ldpm import LdpmError
from ldpm.data.masks import load_test_masks, raw_width_masks
from ldpm.io import atomic_output, read_images, read_table
from ldpm.physics import (Measurement, check_measurement, clip_output, measure,  # clip_output: the policy, defined there
                          scaled_method)
from ldpm.stages import RECONSTRUCTORS, resolve
from ldpm.train import autocast, resolve_device

log = logging.getLogger("ldpm.reconstruct")

Reconstructor = Callable[[Measurement], torch.Tensor]


def zero_filled(weights: dict[str, Path], hp: dict, device: torch.device) -> Reconstructor:
    return lambda meas: meas.x_u


def reconstruct(method: str, test_h5: str | Path, test_csv: str | Path, masks_npz: str | Path, out: str | Path, *,
                weights: dict[str, str] | None = None, hp: dict | None = None, batch_size: int = 16,
                device: str = "auto", seed: int = 0, normalise: str = "gt_max", measurement: str = "magnitude",
                index_csvs: list[str | Path] = (), crop_size: int | None = None, mask_seed: int = 0,
                masks_per: str = "slice") -> None:
    """Write `out` (h5, dataset `recon` aligned with the rows of test_csv; attrs: the `Cost` per slice).
    `normalise`: config data.normalise, how the measurement is scaled before the method sees it. `measurement`:
    "magnitude" (the paper's: k-space of the stored RSS slices) or "multicoil" (the raw coil k-space of every slice,
    read through `index_csvs`, the image grid its centre `crop_size` columns, `ldpm.data.coils`; the test mask,
    drawn at the raw width where that differs (`raw_width_masks`, with the masks' `mask_seed` and `masks_per`),
    times the acquired columns; batches of one raw width)."""
    check_measurement(measurement)
    factory = resolve(RECONSTRUCTORS, method, "method")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    images = torch.from_numpy(read_images(test_h5))
    slice_ids = read_table(test_csv)["slice_id"].tolist()
    if len(slice_ids) != len(images):
        raise LdpmError(f"{test_csv}: {len(slice_ids)} rows but {test_h5} holds {len(images)} images; rerun preprocess")
    masks = load_test_masks(masks_npz, slice_ids)
    coils = None
    batches = [slice(start, start + batch_size) for start in range(0, len(images), batch_size)]
    if measurement == "multicoil":
        from ldpm.data.coils import CoilSlices

        coils = CoilSlices(test_csv, list(index_csvs), crop_size or images.shape[-1])
        masks = raw_width_masks(masks_npz, coils.rows, coils.widths, mask_seed, masks_per)
        batches = coils.runs(batch_size)
    run = scaled_method(factory({name: Path(p) for name, p in (weights or {}).items()}, hp or {}, dev), normalise)
    out_images = np.empty(images.shape, dtype=np.float32)
    cost = Cost(dev)
    # Samplers that need gradients (k-space guidance) re-enable them locally.
    with torch.no_grad(), autocast(dev):
        for i, rows in enumerate(tqdm(batches, desc=f"reconstruct {method}", mininterval=2.0, disable=None)):
            x = images[rows, None].to(dev)
            if coils is None:
                meas = measure(x, masks[rows].to(dev))
            else:  # maps and phase estimated here, from each slice's own ACS: the same for every method
                meas = coils.measurement(rows, torch.stack([masks[r] for r in rows]).to(dev))
            with cost.measure(len(x), count_flops=i == 0, timed=i > 0 or len(batches) == 1):
                image = clip_output(run(meas).float())
                out_images[rows] = image[:, 0].detach().cpu().numpy()
    log.info("%s: %d slices on %s, %s", method, len(images), dev, cost.summary())
    with atomic_output(out) as tmp, h5py.File(tmp, "w") as fh:
        fh.create_dataset("recon", data=out_images)
        fh.attrs.update({"method": method, "measurement": measurement, "device": str(dev), **cost.attrs()})


class Cost:
    """Compute cost per slice: FLOPs counted on the first batch (torch.utils.flop_counter), seconds over the other
    batches (the counter slows the batch it watches), peak memory of the process (and of the GPU on CUDA)."""

    def __init__(self, device: torch.device):
        self.device, self.flops, self.seconds, self.timed_slices = device, 0.0, 0.0, 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    @contextmanager
    def measure(self, n_slices: int, count_flops: bool, timed: bool):
        counter = FlopCounterMode(display=False) if count_flops else nullcontext()
        t0 = time.perf_counter()
        with counter:
            yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if timed:
            self.seconds += time.perf_counter() - t0
            self.timed_slices += n_slices
        if count_flops:
            self.flops = counter.get_total_flops() / n_slices

    def attrs(self) -> dict[str, float]:
        gpu = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else float("nan")
        return {"seconds_per_slice": self.seconds / max(1, self.timed_slices), "gflops_per_slice": self.flops / 1e9,
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak_gpu_gib": gpu}

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.4g}" for k, v in self.attrs().items())
