"""One training loop for every stage: resumable checkpoints, deterministic batches, tqdm progress, a log file.

Multi-GPU: run the same command under `torchrun --nproc_per_node N` (config key `train_processes`). Every
process builds the same global batch (same indices, same masks) and keeps its slice `[rank::N]`; the trainers wrap
their trainable modules in torch's DistributedDataParallel (`data_parallel`), which averages the gradients, so N
processes take the same optimiser steps as one process on the whole batch. Rank 0 alone writes checkpoints and weights.

Determinism and resume: batch order and masks come from generators seeded by (seed, epoch) and (seed, step),
not from iterator state, so a job killed at step k and restarted from its last checkpoint draws exactly the
batches an uninterrupted run would. Checkpoints hold state dicts and torch RNG state only and are loaded with
`weights_only=True`. Final weights are written as safetensors (`ldpm.weights.save_weights`).

Validation: a stage may hand `Trainer.run` a `validate() -> {metric: value}` hook on a fixed validation set (fixed
slices, masks and noise, so the curve is not noise). It runs on rank 0 at the end of every epoch and after the last
step, under no_grad with the modules in eval mode and the RNG state restored afterwards (training draws the same
numbers with or without it). Its rows live in the checkpoint like the loss history, and the run ends by writing
`<out>.curve.csv` (see `curve_path`): per-epoch mean training losses and validation numbers, in long format.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ldpm import LdpmError
from ldpm.io import atomic_output

log = logging.getLogger("ldpm.train")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present (the process's own GPU, LOCAL_RANK, under torchrun), else CPU; any other
    value is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


# ------------------------------------------------------------------ data-parallel training (torchrun + DDP)
def init_distributed(device: str = "auto") -> None:
    """Join torchrun's process group (NCCL on GPUs, Gloo on CPU) when launched with WORLD_SIZE > 1; a no-op for a
    plain process. Only rank 0 logs INFO and shows progress."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dist.get_rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)


def world() -> tuple[int, int]:
    """(rank, number of processes); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return world()[0] == 0


def shard(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This process's slice [rank::N] of a global batch (every tensor indexed along dim 0 alike)."""
    rank, n = world()
    return tensors if n == 1 else tuple(t[rank::n] for t in tensors)


def data_parallel(module: torch.nn.Module) -> torch.nn.Module:
    """`module` wrapped in DistributedDataParallel under torchrun (call the wrapper in the training step so the
    backward pass all-reduces the gradients); the module itself in a plain process."""
    if world()[1] == 1:
        return module
    dev = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: tuple | None = None) -> None:
    """zero_grad → backward → (optional grad-norm clip: (parameters, max_norm)) → step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None and clip[1] > 0:
        torch.nn.utils.clip_grad_norm_(*clip)
    optimizer.step()


def autocast(device: torch.device):
    """bf16 autocast on CUDA (Hopper/Ampere: ~2x matmul throughput, no loss scaling needed); a no-op on CPU, so
    CPU runs stay in float32 and bit-reproducible."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def step_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator that depends only on (seed, keys): used for per-step batches and masks."""
    return np.random.default_rng([seed, *keys])


@dataclass
class EpochSampler:
    """Epoch-wise shuffled mini-batches over n items; batch i of epoch e is a pure function of (seed, e, i).
    `groups` (one label per item, e.g. the raw k-space width of a multicoil slice): every batch holds one group's
    items, as a batch of coil k-space must share its shape; with one group (or none) the plain shuffled batches."""

    n_items: int
    batch_size: int
    seed: int
    groups: np.ndarray | None = None

    def __post_init__(self):
        if self.batch_size % world()[1]:
            raise LdpmError(f"batch_size {self.batch_size} does not split over {world()[1]} training processes; "
                            f"make the stage's batch_size a multiple of config key train_processes")
        if self.groups is not None and len(set(np.asarray(self.groups).tolist())) <= 1:
            self.groups = None

    @property
    def steps_per_epoch(self) -> int:
        if self.groups is None:
            return max(1, math.ceil(self.n_items / self.batch_size))
        return sum(math.ceil(n / self.batch_size) for n in np.unique(self.groups, return_counts=True)[1])

    def batch(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        order = step_rng(self.seed, 0, epoch).permutation(self.n_items)
        if self.groups is not None:  # each group's items in the epoch's order, cut into batches, batches shuffled
            groups = np.asarray(self.groups)[order]
            batches = [self._chunk(order[groups == g], k) for g in np.unique(groups)
                       for k in range(math.ceil((groups == g).sum() / self.batch_size))]
            return batches[step_rng(self.seed, 2, epoch).permutation(len(batches))[i]]
        return self._chunk(order, i)

    def _chunk(self, order: np.ndarray, i: int) -> np.ndarray:
        chunk = order[i * self.batch_size:(i + 1) * self.batch_size]
        if len(chunk) < self.batch_size:  # last partial batch: top up from the start (cycling over a set smaller
            # than the batch) so shapes stay fixed
            chunk = np.concatenate([chunk, np.resize(order, self.batch_size - len(chunk))])
        return np.sort(chunk)


def curve_path(out: str | Path) -> Path:
    """The training-curve CSV beside a stage's weights: results/models/unet.safetensors → unet.curve.csv."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".curve.csv")


CURVE_COLUMNS = ["step", "epoch", "name", "value"]
VAL_SLICES = 32  # default of the trainers' `val_slices` (config key validation_slices)


class Trainer:
    """Runs `step_fn(step) -> {loss_name: value}` from the last checkpoint to `total_steps`.

    `modules` and `optimizers` are everything whose state must survive a restart. `steps_per_epoch` places the
    validation points and groups the training losses of the curve (default: all steps are one epoch).
    """

    def __init__(self, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                 ckpt_dir: str | Path, total_steps: int, ckpt_every: int = 200, desc: str = "train",
                 steps_per_epoch: int | None = None):
        self.modules, self.optimizers = modules, optimizers
        self.ckpt_dir = Path(ckpt_dir)
        self.total_steps, self.ckpt_every, self.desc = total_steps, max(1, ckpt_every), desc
        self.steps_per_epoch = max(1, steps_per_epoch or total_steps)
        self.history: list[dict[str, float]] = []
        self.validation: list[dict[str, float]] = []  # {"step": steps done, "epoch": 1-based, metric: value, ...}
        self.validation_seconds = 0.0

    @property
    def ckpt_path(self) -> Path:
        return self.ckpt_dir / "last.pt"

    def _device(self) -> torch.device:
        params = (p for m in self.modules.values() for p in m.parameters())
        return next(params, torch.empty(0)).device

    def save_checkpoint(self, step: int) -> None:
        if not is_main_process():  # DDP keeps every process's weights identical: rank 0 writes for all
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "step": step,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "validation": self.validation,
        }
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.ckpt_path)  # atomic: a kill mid-save leaves the previous checkpoint intact

    def load_checkpoint(self) -> int:
        if not self.ckpt_path.exists():
            return 0
        try:
            state = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
            raise LdpmError(f"{self.ckpt_path}: corrupted checkpoint ({type(exc).__name__}); "
                            f"delete it to restart this stage from scratch") from None
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        torch.set_rng_state(state["torch_rng"])
        self.history = list(state["history"])
        self.validation = list(state.get("validation", []))  # checkpoints from before validation: none yet
        log.info("resumed %s from %s at step %d", self.desc, self.ckpt_path, state["step"])
        return int(state["step"])

    def epoch_of(self, steps_done: int) -> int:
        """1-based epoch that `steps_done` optimiser steps complete (or are inside of)."""
        return max(1, math.ceil(steps_done / self.steps_per_epoch))

    def _validate(self, validate: Callable[[], dict[str, float]], steps_done: int) -> None:
        """One validation point: eval mode, no_grad, float32, RNG state (CPU and CUDA) restored afterwards."""
        t0 = time.time()
        dev = self._device()
        for m in self.modules.values():
            m.eval()
        try:
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad():
                values = {k: float(v) for k, v in validate().items()}
        finally:
            for m in self.modules.values():
                m.train()
        self.validation.append({"step": steps_done, "epoch": self.epoch_of(steps_done), **values})
        self.validation_seconds += time.time() - t0
        log.info("%s validation epoch %d (step %d): %s", self.desc, self.epoch_of(steps_done), steps_done,
                 " ".join(f"{k}={v:.5g}" for k, v in values.items()))

    def curve(self) -> pd.DataFrame:
        """Long format (step, epoch, name, value): `train_<loss>` = the epoch's mean over its steps, at the epoch's
        last step; `val_<metric>` = each validation point."""
        rows = []
        if self.history:
            hist = pd.DataFrame(self.history)
            hist["epoch"] = hist["step"] // self.steps_per_epoch + 1
            for epoch, group in hist.groupby("epoch", sort=True):
                means = group.drop(columns=["step", "epoch"]).mean(numeric_only=True)
                rows += [{"step": int(group["step"].max()) + 1, "epoch": int(epoch), "name": f"train_{k}",
                          "value": float(v)} for k, v in means.items() if pd.notna(v)]
        for point in self.validation:
            rows += [{"step": int(point["step"]), "epoch": int(point["epoch"]), "name": f"val_{k}",
                      "value": float(v)} for k, v in point.items() if k not in ("step", "epoch")]
        frame = pd.DataFrame(rows, columns=CURVE_COLUMNS)
        return frame.sort_values(["step", "name"], kind="stable").reset_index(drop=True)

    def write_curve(self, path: str | Path) -> None:
        if not is_main_process():
            return
        with atomic_output(path) as tmp:
            self.curve().to_csv(tmp, index=False, float_format="%.6g")

    def run(self, step_fn: Callable[[int], dict[str, float]],
            validate: Callable[[], dict[str, float]] | None = None,
            curve: str | Path | None = None) -> list[dict[str, float]]:
        """Train to total_steps; with `validate`, call it (rank 0) after every epoch and the last step; with
        `curve`, write the training-curve CSV there at the end (rank 0)."""
        start = self.load_checkpoint()
        for m in self.modules.values():
            m.train()
        t0 = time.time()
        self.validation_seconds = 0.0
        bar = tqdm(range(start, self.total_steps), desc=self.desc, initial=start, total=self.total_steps,
                   mininterval=2.0, disable=None if is_main_process() else True)
        for step in bar:
            with autocast(self._device()):
                losses = step_fn(step)
            self.history.append({"step": step, **{k: float(v) for k, v in losses.items()}})
            if step % 25 == 0 or step == self.total_steps - 1:
                msg = " ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                bar.set_postfix_str(msg)
                log.info("%s step %d/%d %s", self.desc, step + 1, self.total_steps, msg)
            done = step + 1
            if validate is not None and is_main_process() and (done % self.steps_per_epoch == 0
                                                               or done == self.total_steps):
                self._validate(validate, done)  # before the checkpoint, so a resumed run keeps this point
            if done % self.ckpt_every == 0 or done == self.total_steps:
                self.save_checkpoint(done)
        for m in self.modules.values():
            m.eval()
        elapsed = time.time() - t0
        log.info("%s finished %d steps in %.1f s (validation %.1f s)", self.desc, self.total_steps - start,
                 elapsed, self.validation_seconds)
        if curve is not None:
            self.write_curve(curve)
        return self.history


def epoch_trainer(modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                  ckpt_dir: str | Path, items, hp: dict, seed: int, desc: str) -> tuple[EpochSampler, Trainer]:
    """The sampler and Trainer of a stage that runs hp["epochs"] epochs of hp["batch_size"] over `items` (a number,
    or the training slices: their `widths`, where they have them, group the batches, `EpochSampler`)."""
    n_items = items if isinstance(items, int) else len(items)
    sampler = EpochSampler(n_items, hp["batch_size"], seed, getattr(items, "widths", None))
    return sampler, Trainer(modules, optimizers, ckpt_dir, total_steps=hp["epochs"] * sampler.steps_per_epoch,
                            ckpt_every=hp["ckpt_every"], desc=desc, steps_per_epoch=sampler.steps_per_epoch)


def checkpoint_identity(model: str, inputs: dict[str, str], hp: dict, masks: dict, seed: int,
                        val_slices: int = VAL_SLICES) -> dict:
    """What a checkpoint belongs to: the stage, its settings and the sha256 of every input file. The validation
    set size counts too: the checkpoint carries the validation history, which must not mix two validation sets."""
    from ldpm.provenance import file_sha256  # cached in the inputs' provenance records

    return {"model": model, "hp": hp, "masks": masks, "seed": seed, "val_slices": val_slices,
            "inputs": {name: file_sha256(path) for name, path in sorted(inputs.items())}}


def claim_checkpoint_dir(ckpt_dir: str | Path, identity: dict) -> None:
    """A checkpoint resumes only the run that wrote it. Snakemake reruns a training job when its settings or inputs
    change, and the checkpoint directory is not an output, so a checkpoint written under another identity (kept in
    ckpt_dir/run.json) is set aside as last.stale.pt, with a warning, and the stage starts over."""
    ckpt_dir = Path(ckpt_dir)
    record, last = ckpt_dir / "run.json", ckpt_dir / "last.pt"
    text = json.dumps(identity, sort_keys=True, indent=1)
    if last.exists() and (not record.exists() or record.read_text() != text):
        os.replace(last, ckpt_dir / "last.stale.pt")
        log.warning("%s was written with other settings or inputs than this run (see %s); set aside as "
                    "last.stale.pt, training starts over", last, record)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, record)
