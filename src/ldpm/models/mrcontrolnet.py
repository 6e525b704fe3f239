"""MRControlNet: IRControlNet (DiffBIR v2) on a frozen SD U-Net, eqs. 6–7.

The control branch is a trainable copy of the U-Net's encoder and middle block (diffusers
`ControlNetModel.from_unet`). Its first conv takes concat(z_t, c_latent): 8 input channels, the first 4 copied
from the U-Net's conv_in, the 4 extra ones zero-initialised, so at initialisation the branch sees exactly what
the U-Net sees. Its zero-initialised 1×1 convs produce the residuals added to the frozen U-Net's skip connections
and middle block (`down_block_additional_residuals` / `mid_block_additional_residual`), so at initialisation
ε_θ equals the frozen U-Net's prediction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel
from torch import nn


class _NoConditionEmbedding(nn.Module):
    """Stands in for ControlNet's image-condition CNN; contributes nothing (a broadcastable zero).

    Why this rather than a subclass: `ControlNetModel.forward` computes `conv_in(sample) +
    controlnet_cond_embedding(controlnet_cond)` and then runs the copied encoder and zero convs. IRControlNet has
    no condition CNN; c_latent enters through the concatenation fed to an 8-channel conv_in. Feeding
    concat(z_t, c_latent) as `sample` and making the embedding a zero keeps diffusers' forward (time embedding,
    blocks, zero convs, ~150 lines) untouched instead of forking it, and keeps the checkpoint layout of DiffBIR's
    IRControlNet (an 8-channel first conv, no hint CNN). Equivalent alternative: a bias-free, zero-initialised
    4→C conv as the embedding, since conv(concat(a, b)) = conv_a(a) + conv_b(b).
    """

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return cond.new_zeros(())


def build_control_branch(unet: UNet2DConditionModel) -> ControlNetModel:
    """IRControlNet branch from `unet`: copied encoder + middle, 8-channel conv_in (extra 4 zero), zero convs."""
    c = unet.config.in_channels
    control = ControlNetModel.from_unet(unet, conditioning_channels=c, load_weights_from_unet=True)
    old = control.conv_in
    conv_in = nn.Conv2d(2 * c, old.out_channels, old.kernel_size, padding=old.padding)
    with torch.no_grad():
        conv_in.weight.zero_()
        conv_in.weight[:, :c] = unet.conv_in.weight
        conv_in.bias.copy_(unet.conv_in.bias)
    control.conv_in = conv_in
    control.controlnet_cond_embedding = _NoConditionEmbedding()
    control.register_to_config(in_channels=2 * c)  # keep the config truthful about the first conv
    return control


class MRControlNet(nn.Module):
    """Frozen SD U-Net + trainable IRControlNet branch; `forward` returns ε_θ(z_t, p, t, c_latent)."""

    def __init__(self, unet: UNet2DConditionModel, control: ControlNetModel | None = None):
        super().__init__()
        self.control = control if control is not None else build_control_branch(unet)
        self.unet = unet
        self.unet.requires_grad_(False)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor | int, c_latent: torch.Tensor,
                prompt_embeds: torch.Tensor) -> torch.Tensor:
        if prompt_embeds.shape[0] != z_t.shape[0]:  # one (empty) prompt for the whole batch
            prompt_embeds = prompt_embeds.expand(z_t.shape[0], -1, -1)
        down, mid = self.control(torch.cat([z_t, c_latent], dim=1), t, encoder_hidden_states=prompt_embeds,
                                 controlnet_cond=c_latent, return_dict=False)
        return self.unet(z_t, t, encoder_hidden_states=prompt_embeds, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample


def training_loss(eps_model: nn.Module, z0: torch.Tensor, c_latent: torch.Tensor, prompt_embeds: torch.Tensor,
                  scheduler: DDPMScheduler, generator: torch.Generator | None = None,
                  t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 7 for `eps_model` (an MRControlNet or its DistributedDataParallel wrapper): ‖ε − ε_θ(z_t, p, t,
    c_latent)‖² (mean over elements) with t ~ U{0, …, T−1}, ε ~ N(0, I) and z_t = √ᾱ_t z0 + √(1−ᾱ_t) ε
    (eq. 6, `scheduler.add_noise`). `t` / `noise` may be fixed (tests)."""
    dev = generator.device if generator is not None else z0.device  # draw where the generator lives
    if t is None:
        t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=generator,
                          device=dev).to(z0.device)
    if noise is None:
        noise = torch.randn(z0.shape, generator=generator, device=dev, dtype=z0.dtype).to(z0.device)
    z_t = scheduler.add_noise(z0, noise, t)
    return F.mse_loss(eps_model(z_t, t, c_latent, prompt_embeds), noise)
