"""E2E-VarNet baseline (fastMRI's `VarNet`) on our single-coil measurement, and loaders for official fastMRI weights.

Single coil: VarNet sees k_u as a 1-coil stack (B, 1, H, W, 2). Its sensitivity network still runs, but
`SensitivityModel` divides the estimated map by the root-sum-of-squares over coils, so with one coil the map is
S = s/|s|: unit magnitude, phase only. The cascades then refine e^{-iφ}·image and map back with e^{iφ}; the output,
RSS over coils of |F^-1(k)|, is just the magnitude (B, H, W). Nothing needs patching.

Scale: VarNet is equivariant to a positive scaling of k-space (NormUnet standardises its input and undoes it, the
sensitivity maps are scale-free, soft DC is linear), so weights trained on raw fastMRI k-space (~1e-4) run on our
images normalised to max 1 unchanged.

Official weights (the paper's U-Net and E2E-VarNet rows) are fastMRI's multi-coil brain models. They load into the
architectures below and run on our single-coil simulation (VarNet with a 1-coil stack, U-Net on the zero-filled
magnitude), but they were trained on multi-coil data: expect a domain gap, not the leaderboard numbers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from fastmri.losses import SSIMLoss
from fastmri.models import Unet, VarNet

from ldpm import LdpmError
from ldpm.baselines import undersampled_batch
from ldpm.baselines.unet import build_unet, unet_reconstruct
from ldpm.io import read_images
from ldpm.train import (data_parallel, epoch_trainer, load_weights, optimizer_step, resolve_device,
                        save_weights, seed_everything)

log = logging.getLogger("ldpm.varnet")

# fastMRI's brain leaderboard models (fastmri_examples/{unet,varnet}/run_pretrained_*_inference.py).
PAPER_VARNET = {"num_cascades": 12, "chans": 18, "pools": 4, "sens_chans": 8, "sens_pools": 4}
PAPER_UNET = {"chans": 256, "num_pool_layers": 4, "drop_prob": 0.0}


def build_varnet(hp: dict) -> VarNet:
    return VarNet(num_cascades=hp["num_cascades"], chans=hp["chans"], pools=hp["pools"],
                  sens_chans=hp["sens_chans"], sens_pools=hp["sens_pools"])


def varnet_reconstruct(model: VarNet, k_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) complex k_u and (B,1,1,W) 0/1 mask → (B,1,H,W) magnitude.

    The coil axis is our channel axis (1 coil). num_low_frequencies=None lets VarNet find the fully sampled centre
    from the mask (the symmetric run of ones around the centre), as fastMRI does when the count is not given.
    """
    masked_kspace = torch.view_as_real(k_u.to(torch.complex64)).contiguous()  # (B, 1, H, W, 2)
    return model(masked_kspace, mask[..., None].bool(), None)[:, None]


def train_varnet(inputs: dict[str, str], out: str | Path, ckpt_dir: str | Path, hp: dict, masks_cfg: dict,
                 seed: int, device: str = "auto") -> list[dict]:
    """SSIM loss as fastMRI's VarNetModule (data_range = volume max, which is 1 after our per-volume normalisation);
    Adam; fresh masks per step drawn from the training AF/centre-fraction pairs, as for the U-Net."""
    seed_everything(seed)
    dev = resolve_device(device)
    images = torch.from_numpy(read_images(inputs["train"]))
    model = build_varnet(hp).to(dev)
    loss_fn = SSIMLoss().to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    sampler, trainer = epoch_trainer({"varnet": model}, {"adam": optimizer}, ckpt_dir, len(images), hp, seed, "varnet")
    data_range = torch.ones(1, device=dev)  # broadcast over the batch
    net = data_parallel(model)

    def step(i: int) -> dict[str, float]:
        x, mask, k_u, _ = undersampled_batch(images, sampler, i, seed, masks_cfg, dev)
        loss = loss_fn(varnet_reconstruct(net, k_u, mask), x, data_range=data_range)
        optimizer_step(optimizer, loss)
        return {"ssim_loss": loss.item()}

    history = trainer.run(step)
    save_weights(model, out, metadata={"method": "varnet", "seed": str(seed)})
    return history


# ---------------------------------------------------------------- official fastMRI weights

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
    override architecture keys (tests use a small one)."""
    arch = PAPER_VARNET | {k: v for k, v in (hp or {}).items() if k in PAPER_VARNET}
    return _load_official(build_varnet(arch), path, "varnet.", "E2E-VarNet")


def load_official_unet(path: str | Path, hp: dict | None = None) -> Unet:
    """The paper's fastMRI U-Net (in 1, out 1, chans 256, 4 pools) with official weights. Run it with
    `unet_reconstruct`: fastMRI's UnetDataTransform standardises the zero-filled input the same way."""
    arch = PAPER_UNET | {k: v for k, v in (hp or {}).items() if k in PAPER_UNET}
    return _load_official(build_unet(arch), path, "unet.", "U-Net")


# ---------------------------------------------------------------- reconstructors

def reconstructor(weights: dict[str, Path], hp: dict, device: torch.device):
    """E2E-VarNet: hp['official'] true → official fastMRI .pt state dict, else our trained safetensors."""
    if hp.get("official", False):
        model = load_official_varnet(weights["model"], hp)
    else:
        model = load_weights(build_varnet(hp), weights["model"])
    model = model.to(device).eval()
    return lambda x_u, k_u, mask: varnet_reconstruct(model, k_u, mask)
