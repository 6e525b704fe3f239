"""Losses: MR-VAE fine-tuning (eq. 5) and SwinMR's Charbonnier term.

Eq. 5: L_vae = μ·‖x̂ − x‖₁ + ν·‖VGG(x̂) − VGG(x)‖₁ + ω·KL(N(u, σ²) ‖ N(0, 1)) + λ·L_GAN.
Images here are in the VAE's space: (B, 3, H, W) in [-1, 1] (see `ldpm.models.latent.to_vae_input`).
GAN: a PatchGAN discriminator with the hinge loss for D and −E[D(x̂)] for the generator, as in
taming-transformers / SD's VAE training. λ is either the fixed weight of eq. 5 (`last_layer=None`) or, as in SD's
VAE training, multiplied by the adaptive weight ‖∇_w L_rec‖/‖∇_w L_GAN‖ at the decoder's last layer w, which makes
λ the size of the GAN gradient relative to the reconstruction gradient; with a fixed λ nothing bounds the −E[D(x̂)]
term against the L1 term. (An earlier measurement of that, made before eq. 5 took SD's per-image sums, no longer
applies and was dropped; the adaptive weight is the default because it is SD's recipe.)
A caller that wants a discriminator warm-up passes lam=0 for the first steps (`disc_start`).

Normalisation of eq. 5 (one convention for every term): per-image SUMS, averaged over the batch, as in
taming-transformers' LPIPSWithDiscriminator that trained SD's VAE with ω = 1e-6. The L1 term is summed over the
C·H·W values of an image (taming sums its per-pixel reconstruction loss the same way), the VGG term is the
per-image feature distance counted once per value (taming adds its per-image perceptual distance to every pixel
before that sum), and the KL is summed over latent elements. ω = 1e-6 then weighs KL against L1 as it did for SD.
Mixing a per-pixel mean L1 with a per-image KL sum would weigh KL C·H·W times more (≈12,000× at 64², ≈300,000×
at 320²) and squeeze the latent towards the prior at the expense of reconstruction.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ldpm import LdpmError


def charbonnier(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """mean(√((a − b)² + ε²)), a smooth L1. (KAIR/SwinMR write √(d² + ε) with ε = 1e-9, i.e. ε here ≈ 3e-5.)"""
    return torch.sqrt((a - b) ** 2 + eps ** 2).mean()


def kl_loss(posterior) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ(μ² + σ² − 1 − log σ²) summed over latent elements, averaged over the batch
    (SD/taming's normalisation). `posterior` is diffusers' DiagonalGaussianDistribution."""
    return posterior.kl().mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix/taming NLayerDiscriminator): `n_layers` stride-2 4×4 convs, a stride-1 conv, and a
    stride-1 conv to one logit per receptive-field patch."""

    def __init__(self, in_chans: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_chans, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # pix2pix init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def d_hinge_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ½(E[relu(1 − D(x))] + E[relu(1 + D(x̂))])."""
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def g_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator adversarial loss −E[D(x̂)] (taming / SD)."""
    return -logits_fake.mean()


def discriminator_loss(disc: nn.Module, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """The D step: hinge loss on real x and detached reconstructions."""
    return d_hinge_loss(disc(x), disc(x_rec.detach()))


# torchvision's VGG feature layers after ReLU: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (vgg16).
VGG16_LAYERS = (3, 8, 15, 22, 29)


class VGGPerceptual(nn.Module):
    """‖VGG(x̂) − VGG(x)‖₁: mean absolute feature difference summed over `layers`, on frozen ImageNet VGG features.

    The weights come from a LOCAL file only (a torchvision vgg16/vgg19 state dict, `.pth` or `.safetensors`; keys
    "features.N.*" or "N.*"); a missing or mismatched file is an LdpmError, never random features.
    Inputs are (B, 3, H, W) in [-1, 1]; they are mapped to ImageNet normalisation.
    """

    def __init__(self, weights_path: str | Path, arch: str = "vgg16", layers=VGG16_LAYERS):
        super().__init__()
        from torchvision.models import vgg as tv_vgg

        path = Path(weights_path)
        if not path.is_file():
            raise LdpmError(f"VGG weights not found at {path}: put torchvision's {arch} ImageNet state dict there "
                            "(e.g. vgg16-397923af.pth) or disable the perceptual term (weight 0)")
        cfg = {"vgg16": "D", "vgg19": "E"}[arch]
        self.layers = tuple(sorted(layers))
        self.features = tv_vgg.make_layers(tv_vgg.cfgs[cfg])[: self.layers[-1] + 1]
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        state = {k: v for k, v in state.items() if int(k.split(".")[0]) <= self.layers[-1]}
        try:
            self.features.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise LdpmError(f"{path} is not a torchvision {arch} state dict: {str(e).splitlines()[0]}") from e
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):  # the feature extractor stays frozen in eval mode
        super().train(mode)
        self.features.eval()
        return self

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, out = ((x + 1) / 2 - self.mean) / self.std, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.layers:
                out.append(h)
        return out

    def forward(self, x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return sum(F.l1_loss(a, b) for a, b in zip(self._feats(x_rec), self._feats(x)))


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4) -> torch.Tensor:
    """‖∇_w rec_loss‖ / ‖∇_w gan_loss‖ at the weight w (clamped, no gradient): scales the GAN term so that its
    gradient at w is as large as the reconstruction term's."""
    (g_rec,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (g_gan,) = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, max_weight).detach()


def mrvae_loss(x: torch.Tensor, x_rec: torch.Tensor, posterior, disc: nn.Module | None,
               vgg: VGGPerceptual | None, mu: float = 1.0, nu: float = 0.2, omega: float = 1e-6,
               lam: float = 0.65, last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 5, the VAE (generator) side. Defaults are the paper's μ=1, ν=0.2, ω=1e-6, λ=0.65.

    Returns (total, terms); terms report l1 and perceptual as per-value means, kl as the per-image sum. With
    `vgg=None` the perceptual term is 0 and terms["perceptual_on"] = 0.0; with
    `disc=None` (or lam=0) the GAN term is skipped. With `last_layer` (the decoder's last conv weight) the GAN term
    is weighted λ·adaptive_gan_weight (terms["gan_weight"]), else λ alone.
    """
    zero = x.new_zeros(())
    values = x[0].numel()  # C·H·W: per-image sums (see the module docstring)
    l1 = (x_rec - x).abs().mean()
    perc = vgg(x_rec, x) if vgg is not None else zero
    kl = kl_loss(posterior)
    gan = g_adv_loss(disc(x_rec)) if (disc is not None and lam != 0) else zero
    weight = zero + 1
    rec = values * (mu * l1 + nu * perc)
    if last_layer is not None and gan.requires_grad:
        weight = adaptive_gan_weight(rec, gan, last_layer)
    total = rec + omega * kl + lam * weight * gan
    terms = {k: float(v.detach()) for k, v in (("l1", l1), ("perceptual", perc), ("kl", kl), ("gan", gan))}
    terms |= {"perceptual_on": float(vgg is not None), "gan_weight": float(weight), "total": float(total.detach())}
    return total, terms
