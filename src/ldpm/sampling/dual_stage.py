"""The Dual-Stage Sampler (LDPM eqs. 8–12): a spaced DDPM sampler whose clean-latent prediction is corrected by
latent data consistency (t > p, eq. 9) or by a k-space gradient step (t ≤ p, eqs. 10–11).

Algebra, and how the paper's equations map onto it. Per step t of the respaced chain (descending), with ᾱ_t the
cumulative product at t and ᾱ_{t−1} the one at the next (smaller) timestep of the chain (1 after the last):

    ε_t  = ε_θ(z_t, t)
    ẑ0   = (z_t − √(1−ᾱ_t) ε_t) / √ᾱ_t                      eq. 8 without its √ᾱ_{t−1} factor
    t > p:  ẑ0' = E[|DC(D(ẑ0), k_u, M)|]                     eq. 9 (posterior mode, no random phase), then
            z_{t−1} = U(ẑ0') + σ_t n
    t ≤ p:  Δ = −s ∇_ẑ0 δ(ẑ0)                                eqs. 10–11 (one step, autograd through D, in fp32)
            z_{t−1} = U(ẑ0) + Δ + σ_t n
    n ~ N(0, I), no noise at the last step; no step does both DC and guidance.

U is the update form (`step_form`):
    "eq12":      U(ẑ0) = √ᾱ_{t−1} ẑ0 + √(1 − ᾱ_{t−1} − σ_t²) ε_t        the paper's eq. 12 (σ_t n left implicit there)
    "posterior": U(ẑ0) = c1 ẑ0 + c2 z_t                                 DiffBIR's SpacedSampler
with the spaced chain's β_t = 1 − ᾱ_t/ᾱ_{t−1}, c1 = √ᾱ_{t−1} β_t/(1−ᾱ_t), c2 = √(1−β_t)(1−ᾱ_{t−1})/(1−ᾱ_t) and
σ_t² = β̃_t = β_t (1−ᾱ_{t−1})/(1−ᾱ_t): the mean and variance of the DDPM posterior q(z_{t−1} | z_t, ẑ0), as in
improved-DDPM / DiffBIR ("fixed_small" variance). Since c1 + c2√ᾱ_t = √ᾱ_{t−1} and c2√(1−ᾱ_t) = √(1−ᾱ_{t−1}−β̃_t),
both forms are the same ancestral DDPM step when nothing corrects ẑ0. A DC replacement ẑ0 → ẑ0' (t > p) reaches
z_{t−1} as √ᾱ_{t−1}(ẑ0' − ẑ0) under eq12 and as c1(ẑ0' − ẑ0) under posterior:
    posterior = eq12 − c2√ᾱ_t (ẑ0' − ẑ0),
i.e. the posterior form keeps the fraction β_t/(1−ᾱ_t) of a DC correction (small at high noise).

The guidance correction Δ moves z_{t−1} by Δ itself under both forms. This is DiffBIR's guidance, which divides
the change of ẑ0 by c1 (`grad_rescale`) so that the posterior mean moves by what the gradient says, and it is the
paper's eqs. 8, 11 and 12 read together: eq. 8's ẑ0 already carries √ᾱ_{t−1}, eq. 11 steps on that, and eq. 12
passes it on with weight 1. (The gradient is taken at the unscaled ẑ0 that the VAE decodes.)

Guidance scale g: two conventions (config `guidance_convention`).
- "diffbir" (default): the paper's guidance is "modified from DiffBIR's restoration guidance", and DiffBIR v2
  (`diffbir/utils/cond_fn.py`, MSEGuidance) multiplies the user's scale by 3000 and takes the gradient of a mean
  squared error per image on [−1, 1] RGB decodes (summed over the batch). Here δ = mean over the sampled k-space
  entries of |F(D(ẑ0)) − k_u|² per image, on the [0, 1] one-channel magnitude. At full sampling (orthonormal FFT,
  Parseval) that δ is the mean squared error on [0, 1] images, a quarter of DiffBIR's MSE on the [−1, 1] RGB image
  (every channel the same): s = 3000 · 4 · g makes the step DiffBIR's (`test_diffbir_convention_is_diffbirs_step_
  at_full_sampling`). g = 0.1 then means s = 1200 on the mean loss.
- "literal": eq. 11 as printed, s = g, with δ summed over k-space entries ("sum") or averaged over the sampled
  ones ("mean", `guidance_norm`). With g = 0.1 and the mean this moves ẑ0 by ~1e-4 of a real correction per step:
  measurably inert (kept to show it, not as a default).
Per-image δ are summed over the batch before the gradient, so each image's step depends only on its own δ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from diffusers import DDPMScheduler
from tqdm import tqdm

from ldpm.models.latent import decode, encode, sd_noise_scheduler
from ldpm.physics import Measurement

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z_t, t as (B,) long) -> ε


@dataclass(frozen=True)
class SpacedSchedule:
    """A respaced chain; all tensors are aligned with `timesteps` (descending)."""

    timesteps: torch.Tensor            # (N,) long, original timesteps used, descending (ends at 0)
    alphas_cumprod: torch.Tensor       # (N,) float64 ᾱ_t
    alphas_cumprod_prev: torch.Tensor  # (N,) ᾱ of the next timestep in the chain, 1 after the last
    betas: torch.Tensor                # (N,) spaced-chain β_t = 1 − ᾱ_t/ᾱ_{t−1}
    posterior_variance: torch.Tensor   # (N,) β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)


def spaced_timesteps(num_train: int = 1000, num_steps: int = 50,
                     alphas_cumprod: torch.Tensor | None = None) -> SpacedSchedule:
    """Evenly spaced subset of {0, …, num_train−1} including both ends (improved-DDPM's `space_timesteps` with one
    section, as DiffBIR's SpacedSampler uses) and the recomputed chain. `alphas_cumprod` defaults to SD's."""
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"num_steps must be in [1, {num_train}], got {num_steps}")
    if alphas_cumprod is None:
        alphas_cumprod = sd_noise_scheduler().alphas_cumprod
    ac = alphas_cumprod.to(torch.float64)
    stride = (num_train - 1) / (num_steps - 1) if num_steps > 1 else 1
    steps = sorted({round(i * stride) for i in range(num_steps)}, reverse=True)
    ts = torch.tensor(steps, dtype=torch.long)
    a = ac[ts]
    a_prev = torch.cat([a[1:], torch.ones(1, dtype=torch.float64)])
    betas = 1 - a / a_prev
    return SpacedSchedule(ts, a, a_prev, betas, betas * (1 - a_prev) / (1 - a))


DIFFBIR_SCALE = 3000.0  # DiffBIR v2's internal multiplier of the user's guidance scale (cond_fn.Guidance)
# DiffBIR's MSE is on [−1, 1] images, δ here on [0, 1]: the same error is 2² = 4 times larger there.
DIFFBIR_RANGE = 4.0
GUIDANCE_CONVENTIONS = ("diffbir", "literal")


def guidance_step_size(scale: float, convention: str = "diffbir", norm: str = "mean") -> tuple[float, str]:
    """(step size on ∇δ, δ normalisation) for the configured g under a convention (module docstring)."""
    if convention == "diffbir":
        if norm != "mean":
            raise ValueError("guidance_convention 'diffbir' takes the mean squared error (guidance_norm: mean)")
        return DIFFBIR_SCALE * DIFFBIR_RANGE * scale, "mean"
    if convention == "literal":
        return scale, norm
    raise ValueError(f"guidance_convention must be one of {GUIDANCE_CONVENTIONS}, got {convention!r}")


class SampleResult(NamedTuple):
    latent: torch.Tensor
    image: torch.Tensor | None  # (B, 1, H, W) in [0, 1]; None when no VAE was given


def kspace_loss(x: torch.Tensor, meas: Measurement, norm: str = "mean") -> torch.Tensor:
    """Eq. 10 per image, shape (B,): ‖A(x) − k_u‖² over coils (‖(F(x) − k_u)·M‖² under magnitude), summed ("sum")
    or averaged over the sampled entries of every coil ("mean")."""
    r = meas.residual(x).flatten(1).sum(1)
    if norm == "sum":
        return r
    if norm == "mean":
        return r / meas.n_sampled()
    raise ValueError(f"guidance_norm must be 'sum' or 'mean', got {norm!r}")


@torch.no_grad()
def latent_dc(z0: torch.Tensor, meas: Measurement, vae) -> torch.Tensor:
    """Eq. 9: ẑ0' = E(|DC(D(ẑ0), k_u, M)|) through the measurement operator, re-encoded with the posterior mode."""
    return encode(vae, meas.data_consistency(decode(vae, z0)).abs())


def guidance_step(z0: torch.Tensor, meas: Measurement, vae, step: float,
                  norm: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 11: ẑ0' = ẑ0 − step·∇_ẑ0 δ with δ of eq. 10 through the decoder (`step` from `guidance_step_size`).
    Returns (ẑ0', δ per image before the step). Always fp32, autocast off: the gradient is the update itself, and
    bf16's 8-bit mantissa would round it (on CUDA the reconstruct stage samples under bf16 autocast)."""
    z = z0.detach().float().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        delta = kspace_loss(decode(vae, z), meas, norm)
        (grad,) = torch.autograd.grad(delta.sum(), z)
    return (z0 - step * grad).detach(), delta.detach()


def predict_z0(z_t: torch.Tensor, eps: torch.Tensor, a: float) -> torch.Tensor:
    """Eq. 8 without its √ᾱ_{t−1} factor (that enters in eq. 12): ẑ0 = (z_t − √(1−ᾱ_t) ε_t) / √ᾱ_t."""
    return (z_t - (1 - a) ** 0.5 * eps) / a ** 0.5


def eq12_update(z0: torch.Tensor, eps: torch.Tensor, a_prev: float, var: float) -> torch.Tensor:
    """Eq. 12 (noise-free part): √ᾱ_{t−1} ẑ0' + √(1 − ᾱ_{t−1} − σ_t²) ε_t, with σ_t² = β̃_t."""
    return a_prev ** 0.5 * z0 + max(1 - a_prev - var, 0.0) ** 0.5 * eps


def posterior_mean(z0: torch.Tensor, z_t: torch.Tensor, a: float, a_prev: float, beta: float) -> torch.Tensor:
    """DiffBIR's update: the mean of q(z_{t−1} | z_t, ẑ0'), c1 ẑ0' + c2 z_t."""
    c1 = a_prev ** 0.5 * beta / (1 - a)
    c2 = (1 - beta) ** 0.5 * (1 - a_prev) / (1 - a)
    return c1 * z0 + c2 * z_t


def _initial_latent(z_T, generator: torch.Generator | None) -> torch.Tensor:
    if isinstance(z_T, torch.Tensor):
        return z_T.clone()
    return torch.randn(tuple(z_T), generator=generator)


def _noise_like(z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else z.device
    return torch.randn(z.shape, generator=generator, device=dev, dtype=z.dtype).to(z.device)


def dual_stage_sample(eps_fn: EpsFn, z_T: torch.Tensor | tuple, meas: Measurement | None = None, *, vae=None, num_steps: int = 50, p: int = 200,
                      guidance_scale: float = 0.1, guidance_convention: str = "diffbir",
                      guidance_norm: str = "mean", use_dc: bool = True, use_guidance: bool = True,
                      step_form: str = "eq12",
                      generator: torch.Generator | None = None, alphas_cumprod: torch.Tensor | None = None,
                      progress: bool = True) -> SampleResult:
    """Dual-Stage Sampler (see the module docstring for the algebra).

    eps_fn(z_t, t) gives ε_θ with the condition (c_latent, prompt) bound in; t is passed as a (B,) long tensor of
    original timesteps, and p compares against original timesteps (p = 200 of T = 1000). `z_T` is a starting
    latent or a shape to draw from `generator`; the same generator then draws each step's noise.
    """
    if step_form not in ("posterior", "eq12"):
        raise ValueError(f"step_form must be 'posterior' or 'eq12', got {step_form!r}")
    if (use_dc or use_guidance) and (vae is None or meas is None):
        raise ValueError("DC and guidance need vae and the measurement")
    g_step, g_norm = guidance_step_size(guidance_scale, guidance_convention, guidance_norm)
    sched = spaced_timesteps(1000 if alphas_cumprod is None else len(alphas_cumprod), num_steps, alphas_cumprod)
    z = _initial_latent(z_T, generator)
    n = len(sched.timesteps)
    for i in tqdm(range(n), desc="dual-stage", disable=not progress, leave=False):
        t = int(sched.timesteps[i])
        a, a_prev = float(sched.alphas_cumprod[i]), float(sched.alphas_cumprod_prev[i])
        beta, var = float(sched.betas[i]), float(sched.posterior_variance[i])
        with torch.no_grad():
            eps = eps_fn(z, torch.full((z.shape[0],), t, dtype=torch.long, device=z.device))
        z0 = predict_z0(z, eps, a)
        guidance = 0.0  # Δ, passed to z_{t−1} whole (module docstring)
        if t > p and use_dc:
            z0 = latent_dc(z0, meas, vae)
        elif t <= p and use_guidance:
            guidance = guidance_step(z0, meas, vae, g_step, g_norm)[0] - z0
        if step_form == "posterior":
            z = posterior_mean(z0, z, a, a_prev, beta) + guidance
        else:
            z = eq12_update(z0, eps, a_prev, var) + guidance
        if i < n - 1:  # the last step (t = 0) adds no noise
            z = z + var ** 0.5 * _noise_like(z, generator)
    image = None
    if vae is not None:
        with torch.no_grad():
            image = decode(vae, z)  # unclipped: ldpm.reconstruct clips every method's output alike
    return SampleResult(z, image)


@torch.no_grad()
def plain_spaced_ddpm(eps_fn: EpsFn, z_T: torch.Tensor | tuple, *, num_steps: int = 50,
                      generator: torch.Generator | None = None, scheduler: DDPMScheduler | None = None,
                      progress: bool = False) -> torch.Tensor:
    """Reference ancestral sampler on the same respaced timesteps, written independently of `dual_stage_sample`:
    diffusers' DDPMScheduler.step with custom timesteps ("fixed_small" variance, no clipping)."""
    scheduler = scheduler if scheduler is not None else sd_noise_scheduler()
    ts = spaced_timesteps(scheduler.config.num_train_timesteps, num_steps, scheduler.alphas_cumprod).timesteps
    scheduler.set_timesteps(timesteps=ts.tolist())
    z = _initial_latent(z_T, generator)
    for t in tqdm(scheduler.timesteps, desc="ddpm", disable=not progress, leave=False):
        eps = eps_fn(z, torch.full((z.shape[0],), int(t), dtype=torch.long, device=z.device))
        z = scheduler.step(eps, int(t), z, generator=generator).prev_sample
    return z
