"""Score-MRI (Chung & Ye 2022): an NCSN++-style score network trained by denoising score matching under the VE-SDE,
reconstructing by predictor–corrector sampling with data consistency, on real-valued magnitude images in [0, 1].

σ convention (as diffusers' ScoreSdeVePipeline and Song's score_sde): σ(t) = σ_min (σ_max/σ_min)^t, t ∈ [ε, 1].
The network is `UNet2DModel(time_embedding_type="fourier")` called as `model(x, σ).sample`: it embeds log σ with
Gaussian Fourier features (scale 16) and divides its output by σ, so `.sample` is the score s_θ(x, σ) itself
(Song's `scale_by_sigma=True`).

Loss (Song et al., λ(σ) = σ²): E_{t,z} ‖σ s_θ(x + σz, σ) + z‖², averaged over pixels (Score-MRI sums over pixels
times 0.5; the mean only rescales the loss, and makes its value independent of image size).

Sampler (Score-MRI's `get_pc_fouriercs_fast`, diffusers' pipeline order): per noise level, Langevin corrector then
reverse-diffusion predictor, each followed by data consistency x ← Re F⁻¹[F(x)(1−M) + k_u]. Taking the real part
after DC (the magnitude variant) makes DC exact only on sampled lines whose mirror line −k is sampled as well; on the
others it halves the residual each time (alternating projections onto "real" and "consistent").

Multicoil measurement: the same sampler with DC through the measurement operator (ESPIRiT maps S and the ACS phase
estimate P): x ← Re[P̄·Sᴴ·F⁻¹{F(S·P·x)(1−M) + k_u}]. This is the SENSE-type multi-coil form of the score-MRI
repository (one image, sensitivities in the DC step) rather than its coil-by-coil SSOS form: SSOS applies the prior to
every coil image's real and imaginary parts (C×2 score evaluations per step), a prior over complex coil images,
while this model is trained, as the paper's baseline, on magnitude images; the SENSE form with a phase estimate is
the one whose prior matches what the network learned, and it costs what the magnitude protocol costs.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from diffusers import ScoreSdeVeScheduler, UNet2DModel
from safetensors import safe_open
from tqdm import tqdm

from ldpm import LdpmError
from ldpm.baselines import undersampled_batch, validation_images, validation_set
from ldpm.io import SliceFile, stable_seed
from ldpm.physics import Measurement
from ldpm.train import (VAL_SLICES, curve_path, data_parallel, epoch_trainer, optimizer_step, resolve_device,
                        seed_everything, shard, step_rng)
from ldpm.weights import load_weights, save_weights

log = logging.getLogger("ldpm.score_mri")

SAMPLING_EPS = 1e-5  # Score-MRI / diffusers: t runs from 1 down to ε (VE-SDE)


def score_mri_configs() -> dict[str, dict]:
    """NCSN++-like UNet2DModel settings. 'paper' is Score-MRI's fastmri_knee_320_ncsnpp_continuous (nf 128,
    ch_mult (1,2,2,2), 4 res blocks, attention at 16 px; at 320² the levels are 320/160/80/40, so, as in NCSN++,
    only the middle block attends). 'tiny' keeps the shape for 64² images on a CPU.

    Kept from NCSN++: Fourier σ embedding (scale 16, log σ), output / σ, additive time conditioning in the res
    blocks ('default', not scale-shift: NCSN++'s BigGAN blocks add Dense(temb)), res-block (BigGAN) resampling,
    num_res_blocks + 1 blocks per up level, single-head attention, GroupNorm eps 1e-6, SiLU, mid-block with
    attention. Not expressible with UNet2DModel: FIR resampling kernels, skip_rescale (1/√2 in every res block; only
    the middle block gets it through mid_block_scale_factor), the 'residual' input pyramid, init_scale 0 (zero-init
    last convs). diffusers' own NCSN++ blocks (SkipDownBlock2D, ...) hard-code a 3-channel image, so they cannot
    take a 1-channel magnitude.
    """
    return {
        "tiny": {"block_out_channels": [16, 32, 32, 32], "layers_per_block": 1, "attn_resolutions": [16],
                 "norm_num_groups": 8},
        "paper": {"block_out_channels": [128, 256, 256, 256], "layers_per_block": 4, "attn_resolutions": [16],
                  "norm_num_groups": 32},
    }


def build_score_model(config: str, image_size: int) -> UNet2DModel:
    """UNet2DModel for (B,1,image_size,image_size); attention in the levels whose resolution is in attn_resolutions."""
    configs = score_mri_configs()
    if config not in configs:
        raise LdpmError(f"config key score_mri.model: unknown '{config}'; known: {', '.join(configs)}")
    c = configs[config]
    levels = len(c["block_out_channels"])
    if image_size % 2 ** (levels - 1):
        raise LdpmError(f"score_mri.model '{config}': image size {image_size} must be a multiple of "
                        f"{2 ** (levels - 1)}")
    attn = [image_size // 2**i in c["attn_resolutions"] for i in range(levels)]
    return UNet2DModel(
        sample_size=image_size, in_channels=1, out_channels=1,
        time_embedding_type="fourier", resnet_time_scale_shift="default",
        block_out_channels=tuple(c["block_out_channels"]), layers_per_block=c["layers_per_block"],
        down_block_types=tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attn)),
        downsample_type="resnet", upsample_type="resnet", attention_head_dim=None,  # one head, as NCSN++
        mid_block_scale_factor=2**0.5, norm_num_groups=c["norm_num_groups"], norm_eps=1e-6, act_fn="silu",
    )


def sigma_of_t(t: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return sigma_min * (sigma_max / sigma_min) ** t


def dsm_loss(score_fn, x: torch.Tensor, sigma_min: float, sigma_max: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoising score matching with λ(σ)=σ²: mean ‖σ s(x+σz, σ) + z‖², t ~ U(ε, 1) (Score-MRI's continuous VE loss).
    `score_fn(x, σ)` returns the score; t and z are drawn on the CPU from `generator` so runs match across devices."""
    b = x.shape[0]
    t = (torch.rand(b, generator=generator) * (1 - SAMPLING_EPS) + SAMPLING_EPS).to(x.device)
    z = torch.randn(x.shape, generator=generator).to(x.device)
    sigma = sigma_of_t(t, sigma_min, sigma_max)[:, None, None, None]
    score = score_fn(x + sigma * z, sigma.flatten())
    return (sigma * score + z).pow(2).mean()


def train_score_mri(inputs: dict[str, str], out: str | Path, ckpt_dir: str | Path, hp: dict, masks_cfg: dict,
                    seed: int, device: str = "auto", *, val_slices: int = VAL_SLICES) -> list[dict]:
    """Unconditional score model on the training magnitudes (the measurement enters only at sampling; masks_cfg
    matters only under data.normalise "input", masks_cfg["normalise"]: each image is then divided by the maximum of
    its zero-filled image under a fresh training mask, the units the sampler works in).

    hp: model (config name), sigma_min, sigma_max, lr, batch_size, epochs, ckpt_every, and optionally warmup
    (linear lr warm-up steps, Score-MRI 5000), grad_clip (Score-MRI 1.0), ema_decay (Score-MRI 0.999). The EMA
    weights are the ones written to `out`; the architecture and σ range go into its metadata.

    Validation (with inputs["val"]): the DSM loss of the EMA weights (the ones written) on at most `val_slices`
    evenly spaced validation slices, in chunks of batch_size whose t and z come from a generator seeded by (seed,
    chunk), so every epoch scores the same noisy inputs.
    """
    seed_everything(seed)
    dev = resolve_device(device)
    images = SliceFile(inputs["train"])  # read per batch
    model = build_score_model(hp["model"], images.shape[-1]).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    sampler, trainer = epoch_trainer({"score": model, "ema": ema}, {"adam": optimizer},
                                     ckpt_dir, len(images), hp, seed, "score_mri")
    warmup, grad_clip, ema_decay = hp.get("warmup", 0), hp.get("grad_clip", 1.0), hp.get("ema_decay", 0.999)
    net = data_parallel(model)
    # data.normalise "input": the prior learns images in the sampler's units (divided by a zero-filled maximum)
    by_input = masks_cfg.get("normalise", "gt_max") == "input"

    def step(i: int) -> dict[str, float]:
        if by_input:
            x = undersampled_batch(images, sampler, i, seed, masks_cfg, dev)[0]
        else:
            (x,) = shard(images[sampler.batch(i)][:, None].to(dev))
        gen = torch.Generator().manual_seed(int(step_rng(seed, 2, i).integers(2**62)))
        for g in optimizer.param_groups:
            g["lr"] = hp["lr"] * min(1.0, (i + 1) / warmup) if warmup > 0 else hp["lr"]
        loss = dsm_loss(lambda xs, s: net(xs, s).sample, x, hp["sigma_min"], hp["sigma_max"], gen)
        optimizer_step(optimizer, loss, clip=(model.parameters(), grad_clip))
        # Song's EMA: the decay ramps up with the update count so early averages are not dominated by the init
        decay = min(ema_decay, (1 + i) / (10 + i))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        return {"dsm": loss.item()}

    validate = None
    if by_input:
        val = validation_set(inputs, val_slices, seed, masks_cfg, dev, "score_mri")
        picked = None if val is None else (val.index, val.x)
    else:
        picked = validation_images(inputs, val_slices, "score_mri", " (DSM loss of the EMA weights, fixed t and z)")
    if picked is not None:
        val_x = picked[1].to(dev)

        def validate() -> dict[str, float]:
            total, size = 0.0, hp["batch_size"]
            for j in range(0, len(val_x), size):  # t and z of chunk j: a generator seeded by (seed, "val", j)
                chunk = val_x[j:j + size]
                gen = torch.Generator().manual_seed(stable_seed(seed, "val", j))
                total += len(chunk) * float(dsm_loss(lambda xs, s: ema(xs, s).sample, chunk, hp["sigma_min"],
                                                     hp["sigma_max"], gen))
            return {"dsm": total / len(val_x)}

    history = trainer.run(step, validate, curve_path(out))
    save_weights(ema, out, metadata={"method": "score_mri", "seed": str(seed), "model": hp["model"],
                                     "unet_config": config_json(ema),
                                     "sigma_min": str(hp["sigma_min"]), "sigma_max": str(hp["sigma_max"])})
    return history


def config_json(model: UNet2DModel) -> str:
    """The architecture as JSON for the weights' metadata, the same bytes for the same model: diffusers' private
    keys (`_use_default_values` is a list in set order, which differs between processes) left out, keys sorted."""
    return json.dumps({k: v for k, v in model.config.items() if not k.startswith("_")}, sort_keys=True)


def load_score_model(weights: str | Path) -> tuple[UNet2DModel, dict]:
    """The EMA score model and its training metadata (σ range, config name) from a train_score_mri output."""
    weights = Path(weights)
    if not weights.exists():
        raise LdpmError(f"{weights}: weights file not found; run the Score-MRI training rule first")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
        config = json.loads(meta["unet_config"])
    except Exception as exc:  # noqa: BLE001
        raise LdpmError(f"{weights}: not a Score-MRI weights file ({type(exc).__name__}: {exc}); "
                        f"delete it and retrain") from None
    model = UNet2DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return load_weights(model, weights).eval(), meta


def data_consistency_real(x: torch.Tensor, meas: Measurement) -> torch.Tensor:
    """Score-MRI's magnitude-variant DC through the measurement operator: Re[P̄·Sᴴ·F⁻¹{F(S·P·x)(1−M) + k_u}],
    i.e. Re F⁻¹[F(x)(1−M) + k_u] under magnitude (one coil, no maps, zero phase)."""
    return meas.data_consistency(x).real


def make_scheduler(n_steps: int, snr: float, n_corrector: int, sigma_min: float,
                   sigma_max: float) -> ScoreSdeVeScheduler:
    sched = ScoreSdeVeScheduler(num_train_timesteps=n_steps, snr=snr, sigma_min=sigma_min, sigma_max=sigma_max,
                                sampling_eps=SAMPLING_EPS, correct_steps=n_corrector)
    sched.set_timesteps(n_steps)  # t_i = linspace(1, ε, N)
    sched.set_sigmas(n_steps)     # σ_i = σ_min (σ_max/σ_min)^{t_i}; discrete σ for the predictor's G
    return sched


@torch.no_grad()
def score_mri_sample(model: UNet2DModel, meas: Measurement, *, n_steps: int, snr: float,
                     n_corrector: int = 1, sigma_min: float = 0.01, sigma_max: float = 378.0,
                     generator: torch.Generator | None = None, progress: bool = True) -> torch.Tensor:
    """PC sampling with DC after every corrector and predictor step; returns (B,1,H,W), the last DC'd noise-free
    predictor mean, unclipped (every method's output is clipped alike in `ldpm.reconstruct`). `generator` is a CPU
    generator (diffusers draws the corrector's noise on the CPU)."""
    sched = make_scheduler(n_steps, snr, n_corrector, sigma_min, sigma_max)
    dev, shape = meas.x_u.device, meas.x_u.shape
    noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(dev) * sched.init_noise_sigma
    x = data_consistency_real(noise, meas)
    x_mean = x
    steps = tqdm(sched.timesteps, desc="score-mri", mininterval=2.0, disable=None if progress else True)
    for i, t in enumerate(steps):
        sigma = sched.sigmas[i].to(dev) * torch.ones(shape[0], device=dev)
        for _ in range(n_corrector):
            x = sched.step_correct(model(x, sigma).sample, x, generator=generator).prev_sample
            x = data_consistency_real(x, meas)
        out = sched.step_pred(model(x, sigma).sample, t, x, generator=generator)
        x = data_consistency_real(out.prev_sample, meas)
        x_mean = data_consistency_real(out.prev_sample_mean, meas)  # noise-free: returned after the last step
    return x_mean


def reconstructor(weights: dict[str, Path], hp: dict, device: torch.device):
    """Score-MRI: architecture and σ range from the weights' metadata; hp gives n_steps (paper 2000), snr (0.16),
    n_corrector (1). hp['model'] / hp['sigma_*'], when present, must match what the weights were trained with."""
    weights = weights["model"]
    model, meta = load_score_model(weights)
    for key, same in (("model", str), ("sigma_min", float), ("sigma_max", float)):
        if key in hp and same(hp[key]) != same(meta[key]):
            raise LdpmError(f"config key score_mri.{key}: {hp[key]} but {weights} was trained with "
                            f"{meta.get(key)}; retrain or fix the config")
    model = model.to(device)
    sigma_min, sigma_max = float(meta["sigma_min"]), float(meta["sigma_max"])

    def run(meas: Measurement) -> torch.Tensor:
        return score_mri_sample(model, meas, n_steps=hp["n_steps"], snr=hp["snr"],
                                n_corrector=hp.get("n_corrector", 1), sigma_min=sigma_min, sigma_max=sigma_max)

    return run
