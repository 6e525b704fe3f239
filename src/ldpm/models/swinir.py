"""A compact SwinIR restoration network built from timm's Swin blocks, and the Sketcher (eqs. 2–3).

Layout as in SwinIR (Liang et al. 2021): shallow 3×3 conv → residual Swin groups (RSTB: Swin blocks with
alternating shifted windows, a 3×3 conv, and a residual) → LayerNorm → 3×3 conv + long skip → 3×3 conv to the
image channels. `global_residual=True` adds the input image to the output (SwinIR's restoration mode, used by
SwinMR nPI and by the Sketcher's R), so the network learns the de-aliasing correction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock
from torch.utils.checkpoint import checkpoint
from torch import nn

from ldpm.physics import Measurement

# "paper": SwinMR nPI / SwinIR restoration size; "tiny": the embedded CPU default.
# grad_checkpoint (memory only, same numbers): in training, each Swin block's activations are recomputed in the
# backward pass instead of stored. The paper body on a whole 320² image stores ~55 GB of activations per image in
# float32 (measured: 5.5 GiB at 96², 13.9 GiB at 160²), so the Sketcher's paper recipe (whole 320² images, batch 8)
# fits no GPU without it; with it a batch-1 training step at 320² peaks at 4.6 GiB RSS on CPU. SwinMR trains on 96²
# patches and does not need it.
SWINIR_CONFIGS = {
    "tiny": {"embed_dim": 32, "depths": [2, 2], "num_heads": [2, 2], "window_size": 8, "mlp_ratio": 2.0},
    "paper": {"embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8, "mlp_ratio": 2.0,
              "grad_checkpoint": True},
}


class RSTB(nn.Module):
    """Residual Swin Transformer Block: `depth` Swin blocks (every second one shifted) → 3×3 conv → + input."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float):
        super().__init__()
        # always_partition keeps the window size fixed whatever the input size (inputs are padded to a multiple);
        # input_resolution is a placeholder until SwinIR.forward sets the real size (set_input_size).
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, input_resolution=(window_size, window_size), num_heads=num_heads,
                                 window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                                 always_partition=True, mlp_ratio=mlp_ratio)
            for i in range(depth))
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.grad_checkpoint = False  # set by SwinIR

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        y = x.permute(0, 2, 3, 1)  # timm blocks work channels-last
        recompute = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            y = checkpoint(blk, y, use_reentrant=False) if recompute else blk(y)
        return x + self.conv(y.permute(0, 3, 1, 2))


class SwinIR(nn.Module):
    """SwinIR for same-size restoration of (B, in_chans, H, W) images; any H, W (reflect-padded to the window)."""

    def __init__(self, in_chans: int = 1, embed_dim: int = 32, depths=(2, 2), num_heads=(2, 2),
                 window_size: int = 8, mlp_ratio: float = 2.0, global_residual: bool = True,
                 grad_checkpoint: bool = False):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads need one entry per RSTB")
        self.window_size, self.global_residual = window_size, global_residual
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, padding=1)
        self.layers = nn.ModuleList(RSTB(embed_dim, d, h, window_size, mlp_ratio) for d, h in zip(depths, num_heads))
        for layer in self.layers:
            layer.grad_checkpoint = grad_checkpoint
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, padding=1)
        self._resolution: tuple[int, int] | None = None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:  # SwinIR's init for the transformer parts
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _set_resolution(self, hw: tuple[int, int]) -> None:
        # The shifted-window attention mask depends on the feature size: rebuild it (a non-persistent buffer)
        # only when the size changes rather than on every forward.
        if hw != self._resolution:
            for layer in self.layers:
                for blk in layer.blocks:
                    blk.set_input_size(hw, (self.window_size, self.window_size))
            self._resolution = hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.window_size, (-w) % self.window_size
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x
        self._set_resolution(tuple(xp.shape[-2:]))
        feat = self.conv_first(xp)
        body = feat
        for layer in self.layers:
            body = layer(body)
        body = self.norm(body.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        out = self.conv_last(self.conv_after_body(body) + feat)
        if self.global_residual:
            out = out + xp
        return out[..., :h, :w]


def build_swinir(name_or_cfg: str | dict = "tiny", **overrides) -> SwinIR:
    """SwinIR from a SWINIR_CONFIGS name or a dict of constructor arguments; keyword overrides win."""
    cfg = dict(SWINIR_CONFIGS[name_or_cfg]) if isinstance(name_or_cfg, str) else dict(name_or_cfg)
    return SwinIR(**(cfg | overrides))


def sketcher(meas: Measurement, net: nn.Module) -> torch.Tensor:
    """Eqs. 2–3: the condition image c = |DC(R(x_u), k_u, M)| through the measurement operator, (B, 1, H, W)."""
    return meas.data_consistency(net(meas.x_u)).abs()
