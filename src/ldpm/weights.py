"""Weight files: our safetensors (written by every trainer, read by every reconstructor) and fastMRI's official
brain state dicts (the paper's U-Net and E2E-VarNet rows).

This module sits below the trainers (`ldpm.train`, `ldpm.method.training`, `ldpm.baselines.*`) and the
reconstructors alike and imports none of them, so inference never reaches into training code and the baselines do
not import each other for weight loading.

Official weights are fastMRI's multi-coil brain models. They load into fastMRI's own `Unet` / `VarNet` with the
leaderboard architectures below (`hp` may override the architecture keys: tests use small ones) and run on our
single-coil simulation (VarNet with a 1-coil stack, U-Net on the zero-filled magnitude; see
`ldpm.baselines.varnet`), but they were trained on multi-coil data: expect a domain gap, not the leaderboard numbers.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from fastmri.models import Unet, VarNet
from safetensors.torch import load_file, save_file

from ldpm import LdpmError

# fastMRI's brain leaderboard models (fastmri_examples/{unet,varnet}/run_pretrained_*_inference.py): the keyword
# arguments of fastmri.models.VarNet and of fastmri.models.Unet (with in_chans = out_chans = 1).
PAPER_VARNET = {"num_cascades": 12, "chans": 18, "pools": 4, "sens_chans": 8, "sens_pools": 4}
PAPER_UNET = {"chans": 256, "num_pool_layers": 4, "drop_prob": 0.0}


# ------------------------------------------------------------------------------------ our weights (safetensors)
def save_weights(module: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Final weights as safetensors (contiguous, CPU copies; shared tensors are cloned). Under torchrun only rank 0
    writes: DDP keeps every process's weights identical."""
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)
    canonical_header(path)


def canonical_header(path: str | Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted. safetensors keeps the metadata in a Rust HashMap,
    so two saves of the same tensors and metadata write the keys in a random order: the files' sha256 differ, and a
    downstream model's checkpoint identity (the sha256 of its input weights) would see a retrained input."""
    import json
    import struct

    with open(path, "r+b") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:  # the same pairs re-serialised: the same length, rewritten in place
            fh.seek(8)
            fh.write(text.ljust(size))  # safetensors pads the header with spaces
            return
    data = Path(path).read_bytes()
    text = text.ljust(-(-len(text) // 8) * 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size:])


def load_weights(module: torch.nn.Module, path: str | Path, strict: bool = True) -> torch.nn.Module:
    """Load safetensors weights; a missing or unreadable file is a one-line LdpmError naming it."""
    path = Path(path)
    if not path.exists():
        raise LdpmError(f"{path}: weights file not found; run the training rule that produces it first")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise LdpmError(f"{path}: not a readable safetensors file ({exc}); delete it and retrain") from None
    module.load_state_dict(state, strict=strict)
    return module


# ------------------------------------------------------------------------------------ official fastMRI weights
def _official_state_dict(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """A fastMRI state dict from `path`: plain, or a Lightning-style {'state_dict': {prefix + key: ...}}."""
    path = Path(path)
    if not path.exists():
        raise LdpmError(f"{path}: official fastMRI weights not found; download the brain state dict from the "
                        f"fastMRI repository to this path, or point the config at the file you have")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise LdpmError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__}); re-download it "
                        f"(a Lightning .ckpt with pickled hyperparameters must be reduced to its state_dict)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LdpmError(f"{path}: expected a state dict, found {type(state).__name__}; re-download it")
    for p in (prefix, "module."):  # Lightning module attribute; DataParallel wrapper
        if any(k.startswith(p) for k in state):
            # keep only the model's keys: a Lightning module also holds e.g. the SSIM loss window ('loss.w')
            state = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
    return state


def _load_official(model: torch.nn.Module, path: str | Path, prefix: str, name: str) -> torch.nn.Module:
    try:
        model.load_state_dict(_official_state_dict(path, prefix))
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise LdpmError(f"{path}: does not match the {name} architecture ({first}); check the file is the "
                        f"fastMRI brain {name} and the architecture keys in the config") from None
    return model.eval()


def load_official_varnet(path: str | Path, hp: dict | None = None) -> VarNet:
    """The paper's E2E-VarNet (12 cascades, chans 18, sens_chans 8, 4 pools) with official weights; `hp` may
    override architecture keys (tests use a small one). Run it with `ldpm.baselines.varnet.varnet_reconstruct`."""
    arch = PAPER_VARNET | {k: v for k, v in (hp or {}).items() if k in PAPER_VARNET}
    return _load_official(VarNet(**arch), path, "varnet.", "E2E-VarNet")


def load_official_unet(path: str | Path, hp: dict | None = None) -> Unet:
    """The paper's fastMRI U-Net (in 1, out 1, chans 256, 4 pools) with official weights. Run it with
    `ldpm.baselines.unet.unet_reconstruct`: fastMRI's UnetDataTransform standardises the zero-filled input the
    same way."""
    arch = PAPER_UNET | {k: v for k, v in (hp or {}).items() if k in PAPER_UNET}
    return _load_official(Unet(in_chans=1, out_chans=1, **arch), path, "unet.", "U-Net")
