"""Latent-diffusion parts shared by both scales: VAE and U-Net configs, the SD loader, the noise schedule, and
encode/decode helpers.

Channel convention (both scales): Stable Diffusion's VAE works on 3-channel images in [-1, 1]. An MRI magnitude
image x in [0, 1] of shape (B, 1, H, W) is replicated to 3 channels and mapped to [-1, 1] on the way in
(`to_vae_input`), and the VAE's 3-channel output is averaged back to one channel and mapped to [0, 1] on the way
out (`from_vae_output`). The tiny models use the same convention, so every helper, loss and sampler is shared
and the paper-scale path only swaps weights.

Latents are always "scaled" latents, z = scaling_factor · posterior (as in SD / DiffBIR's c_latent); `decode`
divides by the scaling factor before the decoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from ldpm import LdpmError

# Real stable-diffusion-2-1-base configs (vae/config.json, unet/config.json), for shape tests without weights.
SD21_BASE_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}
SD21_BASE_UNET_CONFIG = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True,
    "upcast_attention": False, "dual_cross_attention": False, "only_cross_attention": False,
}
SD_PROMPT_LENGTH = 77  # CLIP context length of SD's text encoder
EMPTY_PROMPT_FILE = "empty_prompt.safetensors"


# ----------------------------------------------------------------------------------------------- conventions
def to_vae_input(x01: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) magnitude in [0, 1] → (B, 3, H, W) in [-1, 1] (channel replicated)."""
    return (x01 * 2 - 1).expand(-1, 3, -1, -1)


def from_vae_output(y: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) VAE output in [-1, 1] → (B, 1, H, W) in [0, 1] (channel mean; not clamped, so it stays
    differentiable for guidance — clamp final images yourself)."""
    return (y.mean(dim=1, keepdim=True) + 1) / 2


def encode(vae: AutoencoderKL, x01: torch.Tensor) -> torch.Tensor:
    """Deterministic latent: posterior mode × scaling_factor (DiffBIR's c_latent; the sampler's re-encoding)."""
    return vae.encode(to_vae_input(x01)).latent_dist.mode() * vae.config.scaling_factor


def encode_sample(vae: AutoencoderKL, x01: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic latent: a posterior sample × scaling_factor (SD's training latents z = E(x))."""
    return vae.encode(to_vae_input(x01)).latent_dist.sample(generator) * vae.config.scaling_factor


def decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Scaled latent → (B, 1, H, W) image in about [0, 1] (unclamped)."""
    return from_vae_output(vae.decode(z / vae.config.scaling_factor).sample)


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, x01: torch.Tensor, batch_size: int = 32) -> float:
    """1 / std of the unscaled posterior means of images x01 (N, 1, H, W): LDM's recipe for `scaling_factor`, so
    that scaled latents have unit variance as the diffusion prior assumes (set it with
    `vae.register_to_config(scaling_factor=...)`). Encoded in chunks; the std is over every latent element."""
    device = next(vae.parameters()).device
    total = total_sq = count = 0.0
    for chunk in x01.split(batch_size):
        z = vae.encode(to_vae_input(chunk.to(device))).latent_dist.mode().double()
        total, total_sq, count = total + z.sum().item(), total_sq + z.pow(2).sum().item(), count + z.numel()
    mean = total / count
    return float(1.0 / math.sqrt(total_sq / count - mean**2))


# ---------------------------------------------------------------------------------------------- tiny models
def tiny_vae(latent_factor: int = 4, channels: int = 32, layers_per_block: int = 1, norm_num_groups: int = 8,
             scaling_factor: float = 1.0) -> AutoencoderKL:
    """A small AutoencoderKL with SD's layout (3 → 4 latent channels → 3), downsampling by `latent_factor`.

    One encoder block per factor of 2 plus the first: block_out_channels = (c, 2c, 2c, ...).
    `scaling_factor` defaults to 1; after pretraining set it from `latent_scaling_factor`.
    """
    n_down = int(math.log2(latent_factor))
    if 2 ** n_down != latent_factor or n_down < 1:
        raise LdpmError(f"latent_factor must be a power of two ≥ 2, got {latent_factor}")
    blocks = tuple(channels * min(2 ** i, 2) for i in range(n_down + 1))
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * len(blocks),
                         up_block_types=("UpDecoderBlock2D",) * len(blocks),
                         block_out_channels=blocks, layers_per_block=layers_per_block,
                         norm_num_groups=norm_num_groups, sample_size=64, scaling_factor=scaling_factor)


def tiny_unet(block_out_channels=(32, 64), cross_attention_dim: int = 32, num_heads: int = 2,
              layers_per_block: int = 1, norm_num_groups: int = 8, sample_size: int = 16) -> UNet2DConditionModel:
    """A small UNet2DConditionModel with SD-2's layout: cross-attention in every block but the deepest,
    linear projections, 4 latent channels in/out.

    Note diffusers' naming: `attention_head_dim` of UNet2DConditionModel is the number of heads (SD-2's
    (5, 10, 20, 20) means 64-dim heads), so `num_heads` is passed there.
    """
    n = len(block_out_channels)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        cross_attention_dim=cross_attention_dim, attention_head_dim=num_heads, use_linear_projection=True,
        norm_num_groups=norm_num_groups)


def tiny_empty_prompt(unet: UNet2DConditionModel) -> torch.Tensor:
    """The tiny model's "empty-prompt embedding": a fixed zero tensor of shape (1, 1, cross_attention_dim).

    There is no text encoder at tiny scale. With zero keys and values (SD's attention projections have no bias)
    cross-attention contributes only a constant, i.e. an information-free prompt, which is what LDPM's empty
    prompt amounts to. One token suffices: with identical zero tokens the softmax result does not depend on
    their number.
    """
    return torch.zeros(1, 1, unet.config.cross_attention_dim)


# ------------------------------------------------------------------------------------------ SD from a folder
@dataclass
class SDComponents:
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    prompt_embeds: torch.Tensor  # (1, 77, 1024) empty-prompt embedding


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise LdpmError(f"{what} not found at {path}: point `sd_dir` at a local copy of "
                        "stable-diffusion-2-1-base in diffusers layout (vae/, unet/, text_encoder/, tokenizer/)")
    return path


def empty_prompt_embedding(sd_dir: str | Path) -> torch.Tensor:
    """SD's empty-prompt embedding (1, 77, D): computed with the CLIP text encoder in `sd_dir` when `transformers`
    is installed, else read from `sd_dir/empty_prompt.safetensors` (key "prompt_embeds")."""
    sd_dir = Path(sd_dir)
    cached = sd_dir / EMPTY_PROMPT_FILE
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        if not cached.exists():
            raise LdpmError(
                f"{cached} is missing and `transformers` is not installed, so the empty-prompt embedding cannot be "
                "computed: install transformers, or on a machine that has it run "
                f"`python -c \"from ldpm.models.latent import save_empty_prompt; save_empty_prompt('{sd_dir}')\"` "
                "and copy the file into the SD folder") from None
        from safetensors.torch import load_file
        return load_file(cached)["prompt_embeds"]
    tokenizer = CLIPTokenizer.from_pretrained(_require(sd_dir / "tokenizer", "tokenizer"), local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(_require(sd_dir / "text_encoder", "text encoder"), local_files_only=True)
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        # diffusers' SD-2 text_encoder config already drops the last layer (DiffBIR's "penultimate" OpenCLIP).
        return encoder(ids)[0]


def save_empty_prompt(sd_dir: str | Path) -> Path:
    """Compute the empty-prompt embedding with transformers and cache it as sd_dir/empty_prompt.safetensors."""
    from safetensors.torch import save_file

    emb = empty_prompt_embedding(sd_dir)
    out = Path(sd_dir) / EMPTY_PROMPT_FILE
    save_file({"prompt_embeds": emb.contiguous()}, str(out))
    return out


def load_sd_model(sd_dir: str | Path, sub: str) -> AutoencoderKL | UNet2DConditionModel:
    """One model ("vae" or "unet") of a local stable-diffusion-2-1-base folder; never downloads."""
    sd_dir = Path(sd_dir)
    _require(sd_dir, "Stable Diffusion folder")
    _require(sd_dir / sub / "config.json", f"{sub}/config.json")
    cls = {"vae": AutoencoderKL, "unet": UNet2DConditionModel}[sub]
    try:
        return cls.from_pretrained(sd_dir, subfolder=sub, local_files_only=True)
    except OSError as e:  # e.g. config present but no weights file
        raise LdpmError(f"cannot load {sd_dir / sub}: {e}".splitlines()[0]
                        + " — copy the complete subfolder (config + weights) from stable-diffusion-2-1-base") from e


def load_sd(sd_dir: str | Path) -> SDComponents:
    """VAE, U-Net and empty-prompt embedding from a local stable-diffusion-2-1-base folder; never downloads."""
    return SDComponents(vae=load_sd_model(sd_dir, "vae"), unet=load_sd_model(sd_dir, "unet"),
                        prompt_embeds=empty_prompt_embedding(sd_dir))


# ---------------------------------------------------------------------------------------------- noise schedule
def sd_noise_scheduler() -> DDPMScheduler:
    """SD's training schedule: T = 1000, β from 0.00085 to 0.012 with beta_schedule="scaled_linear", ε-prediction.

    DESIGN/DiffBIR call this schedule "linear"; in LDM/DiffBIR code "linear" means linspace(√β0, √β1, T)², which
    is diffusers' "scaled_linear" (diffusers' "linear" would be a different schedule). No x0 clipping.
    """
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)
