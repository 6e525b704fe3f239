"""LDPM's training stages (paper III-A.2: SkM, then MR-VAE, then MRCN), plus the natural-image pretraining that
stands in for Stable Diffusion at the embedded scale. Every function follows the trainer contract of
`ldpm.stages` and runs in the shared resumable `Trainer` loop.

`hp` holds the `ldpm` config sub-blocks a stage uses (e.g. {"vae": ..., "mrvae": ..., "sd_dir": ...}), so a
stage is rerun only when something it depends on changes. Randomness per step (batch order, masks, posterior
samples, t, ε) is drawn from generators seeded by (seed, step), so an interrupted stage resumes exactly.

Validation (per epoch, `ldpm.train.Trainer`): SkM, PSNR / SSIM of the sketch |DC(R(x_u))| on fixed validation
slices and masks; MR-VAE, the L1 term of eq. 5 and PSNR of the posterior-mode reconstruction of validation
slices; MRCN, eq. 7 on fixed (c, z0, t, ε) per validation slice. The natural-image stand-ins see no MRI, so they
are validated on a second, independent draw of photo patches (another seed): the VAE as the MR-VAE, the U-Net by
its ε-loss with fixed (z0, t, ε).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from ldpm.baselines import (psnr_ssim, reconstruction_metrics, simulated_measurement, training_images,
                            undersampled_batch, validation_images, validation_set)
from ldpm.io import SliceFile, stable_seed
from ldpm.losses import PatchDiscriminator, VGGPerceptual, discriminator_loss, mrvae_loss
from ldpm.method.components import (build_sketcher, load_sketcher, load_vae, natural_patches, pretrained_unet,
                                    pretrained_vae, repair, vae_metadata)
from ldpm.models.latent import (encode, encode_sample, from_vae_output, latent_scaling_factor, sd_noise_scheduler,
                                tiny_empty_prompt, tiny_unet, tiny_vae, to_vae_input)
from ldpm.models.mrcontrolnet import MRControlNet, training_loss
from ldpm.models.swinir import sketcher
from ldpm.physics import clip_output
from ldpm.train import (VAL_SLICES, EpochSampler, Trainer, curve_path, data_parallel, epoch_trainer, optimizer_step,
                        resolve_device, seed_everything, shard, step_rng)
from ldpm.weights import save_weights

log = logging.getLogger("ldpm.method")


def noise_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for step `step`'s noise (posterior samples, t, ε), independent of the batch/mask streams."""
    return torch.Generator().manual_seed(int(step_rng(seed, 2, step).integers(2**62)))


# ------------------------------------------------------------------------------------------------ validation
def vae_metrics(vae: nn.Module, x01: torch.Tensor, batch_size: int) -> dict[str, float]:
    """A VAE on images (N, 1, H, W) in [0, 1], decoding the posterior mode: the L1 term of eq. 5 (mean |rec − x|
    in the VAE's [-1, 1] RGB space, as `ldpm.losses.mrvae_loss`) and the PSNR of the reconstruction,
    channel-averaged as LDPM decodes and clipped as every output (`ldpm.physics.clip_output`;
    `ldpm.baselines.psnr_ssim`, data range = each image's max)."""
    dev = next(vae.parameters()).device
    abs_sum, count, images = 0.0, 0, []
    for chunk in x01.split(batch_size):
        x3 = to_vae_input(chunk.to(dev))
        rec = vae.decode(vae.encode(x3).latent_dist.mode()).sample
        abs_sum, count = abs_sum + float((rec - x3).abs().sum()), count + x3.numel()
        images.append(clip_output(from_vae_output(rec).float()).cpu())
    return {"l1": abs_sum / count, "psnr": psnr_ssim(x01[:, 0].numpy(), torch.cat(images)[:, 0].numpy())["psnr"]}


def fixed_noise(z0: torch.Tensor, seed: int, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, ε) for validation latents z0 (N, ...): t evenly spaced over the schedule across the N items (a
    stratified estimate of the expectation over t), ε from a generator seeded by (seed, "val"); fixed per item."""
    t = torch.linspace(0, num_train_timesteps - 1, len(z0)).round().long()
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(stable_seed(seed, "val", "eps")))
    return t.to(z0.device), noise.to(z0.device)


def eps_loss(eps_fn, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, scheduler, batch_size: int) -> float:
    """mean ‖ε − eps_fn(z_t, t, rows)‖² over fixed (z0, t, ε), in chunks (`rows` a slice of the items)."""
    total = 0.0
    for i in range(0, len(z0), batch_size):
        rows = slice(i, i + batch_size)
        z_t = scheduler.add_noise(z0[rows], noise[rows], t[rows])
        total += float(F.mse_loss(eps_fn(z_t, t[rows], rows), noise[rows], reduction="sum"))
    return total / noise.numel()


def natural_validation_patches(nat: dict, n: int, seed: int) -> torch.Tensor | None:
    """A second, independent draw of `n` photo patches (seed (seed, "val")); None when n = 0."""
    if n <= 0:
        log.info("natural-image validation off (validation_slices is 0)")
        return None
    log.info("natural-image validation: %d held-out patches (another draw than the training bank)", n)
    return natural_patches(nat["images"], n, nat["patch_size"], stable_seed(seed, "val"))


# ------------------------------------------------------------------------ embedded stand-in for SD pretraining
def train_natural_vae(inputs: dict, out: str | Path, ckpt_dir: str | Path, hp: dict, masks_cfg: dict, seed: int,
                      device: str = "auto", *, val_slices: int = VAL_SLICES) -> list[dict]:
    """The tiny VAE on photo patches with L1 + ω·KL (eq. 5 without VGG/GAN: a short warm start, not SD's full
    recipe), then `scaling_factor` = 1/std of the latents, LDM's rule."""
    seed_everything(seed)
    dev = resolve_device(device)
    nat, cfg = hp["natural"], hp["natural_vae"]
    patches = natural_patches(nat["images"], nat["n_patches"], nat["patch_size"], seed)
    log.info("natural-image VAE: %d patches of %d px from %s", len(patches), nat["patch_size"], nat["images"])
    vae = tiny_vae(**hp["vae"]).to(dev)
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg["lr"])
    sampler = EpochSampler(len(patches), cfg["batch_size"], seed)
    trainer = Trainer({"vae": vae}, {"adam": optimizer}, ckpt_dir, total_steps=cfg["steps"],
                      ckpt_every=cfg["ckpt_every"], desc="natural_vae", steps_per_epoch=sampler.steps_per_epoch)

    def step(i: int) -> dict[str, float]:
        x3 = to_vae_input(patches[sampler.batch(i)].to(dev))
        posterior = vae.encode(x3).latent_dist
        rec = vae.decode(posterior.sample(noise_generator(seed, i))).sample
        loss, terms = mrvae_loss(x3, rec, posterior, None, None, mu=1.0, nu=0.0, omega=cfg["kl_weight"], lam=0.0)
        optimizer_step(optimizer, loss)
        return {"l1": terms["l1"], "kl": terms["kl"]}

    val = natural_validation_patches(nat, val_slices, seed)
    validate = None if val is None else (lambda: vae_metrics(vae, val, cfg["batch_size"]))
    history = trainer.run(step, validate, curve_path(out))
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, patches))
    log.info("natural-image VAE scaling_factor = %.4f", vae.config.scaling_factor)
    save_weights(vae, out, metadata=vae_metadata(vae, stage="ldpm_natural_vae", seed=seed,
                                                 images=",".join(nat["images"])))
    return history


def train_natural_unet(inputs: dict, out: str | Path, ckpt_dir: str | Path, hp: dict, masks_cfg: dict, seed: int,
                       device: str = "auto", *, val_slices: int = VAL_SLICES) -> list[dict]:
    """The tiny denoiser U-Net on natural-VAE latents of the same photo patches: SD's ε-loss, SD's schedule,
    empty prompt (the only prompt LDPM uses)."""
    seed_everything(seed)
    dev = resolve_device(device)
    nat, cfg = hp["natural"], hp["natural_unet"]
    vae = load_vae(inputs["natural_vae"], hp).to(dev)
    patches = natural_patches(nat["images"], nat["n_patches"], nat["patch_size"], seed)
    # The VAE is frozen: encode the bank once, draw a fresh posterior sample per step.
    with torch.no_grad():
        posterior = torch.cat([vae.encode(to_vae_input(p.to(dev))).latent_dist.parameters for p in patches.split(64)])
    scale = vae.config.scaling_factor
    unet = tiny_unet(**hp["unet"]).to(dev)
    prompt = tiny_empty_prompt(unet).to(dev)
    scheduler = sd_noise_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg["lr"])
    sampler = EpochSampler(len(patches), cfg["batch_size"], seed)
    trainer = Trainer({"unet": unet}, {"adamw": optimizer}, ckpt_dir, total_steps=cfg["steps"],
                      ckpt_every=cfg["ckpt_every"], desc="natural_unet", steps_per_epoch=sampler.steps_per_epoch)

    def step(i: int) -> dict[str, float]:
        g = noise_generator(seed, i)
        z0 = DiagonalGaussianDistribution(posterior[sampler.batch(i)]).sample(g) * scale
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(z0),), generator=g).to(dev)
        noise = torch.randn(z0.shape, generator=g).to(dev)
        pred = unet(scheduler.add_noise(z0, noise, t), t, encoder_hidden_states=prompt.expand(len(z0), -1, -1)).sample
        loss = F.mse_loss(pred, noise)
        optimizer_step(optimizer, loss)
        return {"eps_mse": loss.item()}

    validate, val = None, natural_validation_patches(nat, val_slices, seed)
    if val is not None:
        with torch.no_grad():  # fixed latents: a posterior sample each, from a seeded generator
            g = torch.Generator().manual_seed(stable_seed(seed, "val", "z0"))
            z0 = torch.cat([DiagonalGaussianDistribution(vae.encode(to_vae_input(p.to(dev))).latent_dist.parameters)
                            .sample(g) for p in val.split(64)]) * scale
        t, noise = fixed_noise(z0, seed, scheduler.config.num_train_timesteps)

        def validate() -> dict[str, float]:
            return {"eps_mse": eps_loss(lambda z_t, tt, rows: unet(z_t, tt, encoder_hidden_states=prompt.expand(
                len(z_t), -1, -1)).sample, z0, t, noise, scheduler, cfg["batch_size"])}

    history = trainer.run(step, validate, curve_path(out))
    save_weights(unet, out, metadata={"stage": "ldpm_natural_unet", "seed": str(seed)})
    return history


# ------------------------------------------------------------------------------------------ MRI stages
def train_sketcher(inputs: dict, out: str | Path, ckpt_dir: str | Path, hp: dict, masks_cfg: dict, seed: int,
                   device: str = "auto", *, val_slices: int = VAL_SLICES) -> list[dict]:
    """SkM's repair net R (SwinIR): x_u → x with an L1 loss on R(x_u) (the paper does not state SkM's loss), fresh
    masks per step. DC (eq. 3) is applied after R at use, not in the loss: it has no parameters."""
    seed_everything(seed)
    dev = resolve_device(device)
    cfg = hp["sketcher"]
    images = training_images(inputs, masks_cfg)  # read per batch
    net = build_sketcher(hp).to(dev)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    sampler, trainer = epoch_trainer({"sketcher": net}, {"adam": optimizer},
                                     ckpt_dir, images, cfg, seed, "sketcher")
    ddp_net = data_parallel(net)

    def step(i: int) -> dict[str, float]:
        x, meas = undersampled_batch(images, sampler, i, seed, masks_cfg, dev)
        loss = F.l1_loss(repair(ddp_net, meas.x_u), x)
        optimizer_step(optimizer, loss)
        return {"l1": loss.item()}

    val = validation_set(inputs, val_slices, seed, masks_cfg, dev, "sketcher")
    validate = val and (lambda: reconstruction_metrics(partial(sketcher, net=partial(repair, net)), val,
                                                       cfg["batch_size"]))
    history = trainer.run(step, validate, curve_path(out))
    save_weights(net, out, metadata={"stage": "ldpm_sketcher", "arch": cfg["arch"], "loss": "l1", "seed": str(seed)})
    return history


class _Autoencode(nn.Module):
    """encode → posterior sample → decode as one forward, so DistributedDataParallel sees the VAE's use in a step.
    Returns (reconstruction, posterior moments)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.sample(generator)).sample, posterior.parameters


def train_mrvae(inputs: dict, out: str | Path, ckpt_dir: str | Path, hp: dict, masks_cfg: dict, seed: int,
                device: str = "auto", *, val_slices: int = VAL_SLICES) -> list[dict]:
    """MR-VAE: the natural-image (or SD) VAE fine-tuned on MRI with eq. 5, a PatchGAN discriminator trained in
    alternation (hinge loss). The GAN term and D's updates start at `disc_start` (taming's warm-up); λ is scaled by
    the adaptive weight when `adaptive_gan_weight` (SD's VAE recipe; see ldpm.losses). Without
    `ldpm.vgg_weights` the perceptual term is off; that is logged and written into the weights' metadata."""
    seed_everything(seed)
    dev = resolve_device(device)
    cfg = hp["mrvae"]
    if hp["vgg_weights"]:  # checked first: a wrong path fails before anything is loaded
        vgg = VGGPerceptual(hp["vgg_weights"]).to(dev)
        perceptual = f"on ({hp['vgg_weights']})"
    else:
        vgg = None
        perceptual = "off (config key ldpm.vgg_weights is null)"
        log.warning("MR-VAE: perceptual term of eq. 5 is OFF: set ldpm.vgg_weights to a local torchvision VGG16 "
                    "state dict to enable it (random VGG features are never used)")
    images = SliceFile(inputs["train"])  # read per batch
    vae = pretrained_vae(inputs, hp).to(dev).train().requires_grad_(True)
    disc = PatchDiscriminator(in_chans=3, ndf=cfg["disc_channels"], n_layers=cfg["disc_layers"]).to(dev)
    last_layer = vae.decoder.conv_out.weight if cfg["adaptive_gan_weight"] else None  # see ldpm.losses
    # Adam's default betas for the VAE, taming's (0.5, 0.9) for the discriminator (SD's kl-f8 used (0.5, 0.9) for
    # both). The paper is silent; the comparison that chose this predates eq. 5's per-image sums and is not claimed.
    opt_g = torch.optim.Adam(vae.parameters(), lr=cfg["lr"])
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg["lr"], betas=(0.5, 0.9))
    sampler, trainer = epoch_trainer({"vae": vae, "disc": disc}, {"adam_g": opt_g, "adam_d": opt_d},
                                     ckpt_dir, len(images), cfg, seed, "mrvae")
    autoencode, ddp_disc = data_parallel(_Autoencode(vae)), data_parallel(disc)
    # data.normalise "input": the images in the units LDPM decodes to, those of the scaled measurement
    by_input = masks_cfg.get("normalise", "gt_max") == "input"

    def step(i: int) -> dict[str, float]:
        if by_input:
            x3 = to_vae_input(undersampled_batch(images, sampler, i, seed, masks_cfg, dev)[0])
        else:
            (x3,) = shard(to_vae_input(images[sampler.batch(i)][:, None].to(dev)))
        rec, moments = autoencode(x3, noise_generator(seed, i))
        posterior = DiagonalGaussianDistribution(moments)
        gan_on = i >= cfg["disc_start"]
        disc.requires_grad_(False)  # the G step must not leave gradients in D
        loss, terms = mrvae_loss(x3, rec, posterior, disc, vgg, mu=cfg["mu"], nu=cfg["nu"], omega=cfg["omega"],
                                 lam=cfg["lam"] if gan_on else 0.0, last_layer=last_layer)
        optimizer_step(opt_g, loss)
        if gan_on:
            disc.requires_grad_(True)
            d_loss = discriminator_loss(ddp_disc, x3, rec)
            optimizer_step(opt_d, d_loss)
            terms["d_hinge"] = d_loss.item()
        return {k: v for k, v in terms.items() if k != "perceptual_on"}

    if by_input:
        val = validation_set(inputs, val_slices, seed, masks_cfg, dev, "mrvae")
        picked = None if val is None else (val.index, val.x.cpu())
    else:
        picked = validation_images(inputs, val_slices, "mrvae", " (L1 of eq. 5 and PSNR, posterior mode)")
    validate = None if picked is None else (lambda: vae_metrics(vae, picked[1], cfg["batch_size"]))
    history = trainer.run(step, validate, curve_path(out))
    # Latent scale (config ldpm.mrvae.scaling): "sd" keeps the pretrained VAE's factor (SD's 0.18215 at paper scale),
    # the scale the frozen U-Net was trained at and DiffBIR keeps, so LDPM and its w/o-MR-VAE ablation sample at one
    # scale; "measured" sets 1/std of the fine-tuned latents on the training set (LDM's rule; evenly spaced images,
    # at most `scale_images`, so its memory is bounded by that and not by the training set).
    vae.eval()
    pick = torch.linspace(0, len(images) - 1, min(len(images), cfg["scale_images"])).long()
    previous = float(vae.config.scaling_factor)
    scale_images = images[pick][:, None]
    if by_input:  # in the units training saw them: scaled under masks of their own stream
        scale_images = simulated_measurement(scale_images, step_rng(seed, 4, 0), masks_cfg)[0]
    measured = latent_scaling_factor(vae, scale_images)
    if cfg["scaling"] == "measured":
        vae.register_to_config(scaling_factor=measured)
    log.info("MR-VAE scaling_factor = %.4f (ldpm.mrvae.scaling: %s; the pretrained VAE's %.4f, 1/std of the "
             "fine-tuned latents on %d training images %.4f)", vae.config.scaling_factor, cfg["scaling"], previous,
             len(pick), measured)
    save_weights(vae, out, metadata=vae_metadata(vae, stage="ldpm_mrvae", perceptual=perceptual, seed=seed,
                                                 mu=cfg["mu"], nu=cfg["nu"], omega=cfg["omega"], lam=cfg["lam"],
                                                 disc_start=cfg["disc_start"], scaling=cfg["scaling"],
                                                 scaling_images=len(pick), measured_scaling_factor=repr(measured)))
    return history


def train_mrcn(inputs: dict, out: str | Path, ckpt_dir: str | Path, hp: dict, masks_cfg: dict, seed: int,
               device: str = "auto", *, mr_vae: bool = True, use_skm: bool = True,
               val_slices: int = VAL_SLICES) -> list[dict]:
    """MRControlNet (eq. 7): only the control branch trains; the pretrained U-Net, MR-VAE and sketcher are frozen.
    Per step: fresh masks → c = |DC(R(x_u))| (eqs. 2–3) → c_latent = E(c) (posterior mode), z0 = E(x) (a posterior
    sample, as SD trains), empty prompt. Each image enters `noise_draws` times with its own z0 sample, t and ε:
    more denoising samples per sketcher pass, which dominates the step's cost at the embedded scale.
    `mr_vae=False` / `use_skm=False` train the MRCN an ablation runs with in `ldpm.ablations_mode: retrain`
    (natural-image VAE latents; the condition |DC(x_u)| without the repair net). Only the control branch is saved."""
    seed_everything(seed)
    dev = resolve_device(device)
    cfg = hp["mrcn"]
    images = training_images(inputs, masks_cfg)  # read per batch
    unet, prompt = pretrained_unet(inputs, hp)
    model = MRControlNet(unet.to(dev))
    prompt = prompt.to(dev)
    vae = (load_vae(inputs["mrvae"], hp) if mr_vae else pretrained_vae(inputs, hp).eval().requires_grad_(False))
    vae = vae.to(dev)
    net = partial(repair, load_sketcher(inputs["sketcher"], hp).to(dev)) if use_skm else nn.Identity()
    draws = cfg["noise_draws"]
    scheduler = sd_noise_scheduler()
    optimizer = torch.optim.AdamW(model.control.parameters(), lr=cfg["lr"])
    sampler, trainer = epoch_trainer({"control": model.control}, {"adamw": optimizer},
                                     ckpt_dir, images, cfg, seed, "mrcn")
    eps_model = data_parallel(model)

    def step(i: int) -> dict[str, float]:
        x, meas = undersampled_batch(images, sampler, i, seed, masks_cfg, dev)
        g = noise_generator(seed, i)
        with torch.no_grad():
            c_latent = encode(vae, sketcher(meas, net)).repeat(draws, 1, 1, 1)
            z0 = encode_sample(vae, x.repeat(draws, 1, 1, 1), g)
        loss = training_loss(eps_model, z0, c_latent, prompt, scheduler, generator=g)
        optimizer_step(optimizer, loss)
        return {"eps_mse": loss.item()}

    validate, val = None, validation_set(inputs, val_slices, seed, masks_cfg, dev, "mrcn")
    if val is not None:  # the frozen parts are encoded once: c_latent, and z0 from a seeded posterior sample
        g = torch.Generator().manual_seed(stable_seed(seed, "val", "z0"))
        with torch.no_grad():
            chunks = list(val.chunks(cfg["batch_size"]))
            c_val = torch.cat([encode(vae, sketcher(meas, net)) for _, meas in chunks])
            z0_val = torch.cat([encode_sample(vae, x, g) for x, *_ in chunks])
        t_val, noise_val = fixed_noise(z0_val, seed, scheduler.config.num_train_timesteps)

        def validate() -> dict[str, float]:
            return {"eps_mse": eps_loss(lambda z_t, t, rows: model(z_t, t, c_val[rows], prompt), z0_val, t_val,
                                        noise_val, scheduler, cfg["batch_size"] * draws)}

    history = trainer.run(step, validate, curve_path(out))
    save_weights(model.control, out, metadata={"stage": "ldpm_mrcn", "seed": str(seed), "vae": "mrvae" if mr_vae
                                               else "natural", "condition": "sketch" if use_skm else "dc_zero_filled",
                                               "contents": "IRControlNet control branch only"})
    return history


def train_mrcn_no_mrvae(inputs, out, ckpt_dir, hp, masks_cfg, seed, device="auto", *, val_slices=VAL_SLICES):
    return train_mrcn(inputs, out, ckpt_dir, hp, masks_cfg, seed, device, mr_vae=False, val_slices=val_slices)


def train_mrcn_no_skm(inputs, out, ckpt_dir, hp, masks_cfg, seed, device="auto", *, val_slices=VAL_SLICES):
    return train_mrcn(inputs, out, ckpt_dir, hp, masks_cfg, seed, device, use_skm=False, val_slices=val_slices)
