"""Stand-ins for every local input configs/paper.yaml reads, for the paper-path rehearsal (`ldpm rehearsal-inputs`).

The rehearsal runs the paper config itself (configs/paper.yaml + configs/rehearsal.yaml, which changes only amounts
of work) end to end, so that the paper path breaks on a CPU, not after GPU days. Every file written here is a
STAND-IN: random weights in the real architectures and key layouts, and simulated fastMRI-format raw data at the
real matrix sizes. Nothing computed from them is a result. `STAND-IN.json` in every folder written here says so
and lists each file with its sha256; the perceptual-metric loader accepts a backbone whose hash is not the pinned
one only when such a manifest lists it, and then prints a STAND-IN note under Table I (`ldpm.evaluate.perceptual`).

Layout under --out (the paths configs/rehearsal.yaml points at, relative to the working directory `rehearsal/`):
    brain/                  fastMRI brain multicoil files (embedded generator, ldpm.data.embedded, at matrix 320)
    knee/                   fastMRI knee multicoil files: CORPD_FBK, 15 coils, 640 x 368 k-space (OOD column)
    stable-diffusion-2-1-base/   diffusers layout, SD-2-1-base architectures, random seeded weights
    weights/                vgg16 / vgg19 (torchvision keys), fastMRI official U-Net / VarNet state dicts
                            (fastMRI keys, paper sizes), LPIPS AlexNet trunk and torch-fidelity Inception-v3
                            (their key layouts), all random

Profiles: `full` (the GPU rehearsal; 16-slice brain volumes, a test subject with all five acquisitions at both
field strengths so every Table III column has volumes) and `cpu` (2 CPU cores: 4-slice volumes, one slice each
after the paper's drop of the last 3, so every training stage takes one step per epoch at batch 1 and the test set
is 2 brain slices + 1 knee slice; used with configs/rehearsal-cpu.yaml).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ldpm.config import STAND_IN_MANIFEST

log = logging.getLogger("ldpm.rehearsal")

SD_NAME = "stable-diffusion-2-1-base"
STANDIN_STATEMENT = ("STAND-IN written by `ldpm rehearsal-inputs` for the paper-path rehearsal: random weights / "
                     "simulated data in the real layouts. Nothing computed from these files is a result.")

# --------------------------------------------------------------------------------- stable-diffusion-2-1-base
# The published configs of stabilityai/stable-diffusion-2-1-base on the Hugging Face hub (model_index.json,
# vae/config.json, unet/config.json, text_encoder/config.json, tokenizer/tokenizer_config.json,
# scheduler/scheduler_config.json), written out here because nothing can be downloaded at run time.
SD21_BASE_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.8.0",
    "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SD21_BASE_VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.8.0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}
SD21_BASE_UNET = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.8.0", "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False, "use_linear_projection": True,
}
SD21_BASE_TEXT_ENCODER = {  # OpenCLIP ViT-H/14 text tower without its last layer (23 of 24), as diffusers ships it
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "gelu", "hidden_size": 1024, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "model_type": "clip_text_model", "num_attention_heads": 16, "num_hidden_layers": 23, "pad_token_id": 1,
    "projection_dim": 512, "torch_dtype": "float32", "vocab_size": 49408,
}
SD21_BASE_TOKENIZER = {
    "add_prefix_space": False, "bos_token": "<|startoftext|>", "do_lower_case": True,
    "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77, "pad_token": "!",
    "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>",
}
SD21_BASE_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None,
}


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def _seeded(seed: int, *keys: int) -> None:
    torch.manual_seed(int(np.random.default_rng([seed, *keys]).integers(2**62)))


def _minimal_clip_vocab() -> tuple[dict[str, int], str]:
    """vocab.json / merges.txt for CLIPTokenizer: the 256 byte-level characters ('</w>' forms too) at CLIP's ids
    for the first ones, the start / end tokens at CLIP's 49406 / 49407. Only the empty prompt is ever tokenised."""
    from itertools import chain

    bs = list(chain(range(ord("!"), ord("~") + 1), range(ord("¡"), ord("¬") + 1), range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": 256 + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": 49406, "<|endoftext|>": 49407}
    return vocab, "#version: 0.2\n"


def write_tokenizer(folder: Path) -> Path:
    """A tokenizer folder that CLIPTokenizer.from_pretrained loads: the minimal vocab and SD-2-1-base's
    tokenizer_config / special_tokens_map (pad "!", max length 77)."""
    vocab, merges = _minimal_clip_vocab()
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text(merges)
    _write_json(folder / "tokenizer_config.json", SD21_BASE_TOKENIZER)
    _write_json(folder / "special_tokens_map.json",
                {k: SD21_BASE_TOKENIZER[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")})
    return folder


def write_sd(out: Path, seed: int) -> Path:
    """stable-diffusion-2-1-base in diffusers layout with random weights (see the module docstring).

    The empty-prompt embedding: with `transformers` installed, a random CLIPTextModel is saved and
    `ldpm.models.latent.save_empty_prompt` computes it, as a real SD folder would give it; without, the pipeline
    reads sd_dir/empty_prompt.safetensors, written here as a seeded random (1, 77, 1024) tensor (the text-encoder
    weights are then not written: nothing could read them)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file

    sd = out / SD_NAME
    _write_json(sd / "model_index.json", SD21_BASE_MODEL_INDEX)
    _write_json(sd / "scheduler" / "scheduler_config.json", SD21_BASE_SCHEDULER)
    for sub, cls, cfg, key in (("vae", AutoencoderKL, SD21_BASE_VAE, 1), ("unet", UNet2DConditionModel,
                                                                          SD21_BASE_UNET, 2)):
        _seeded(seed, key)
        model = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
        model.save_pretrained(sd / sub, safe_serialization=True)
        _write_json(sd / sub / "config.json", cfg)  # the published file, key for key
        del model
    write_tokenizer(sd / "tokenizer")
    _write_json(sd / "text_encoder" / "config.json", SD21_BASE_TEXT_ENCODER)
    try:
        from transformers import CLIPTextConfig, CLIPTextModel
    except ImportError:
        _seeded(seed, 3)
        emb = torch.randn(1, 77, SD21_BASE_TEXT_ENCODER["hidden_size"])
        save_file({"prompt_embeds": emb.contiguous()}, str(sd / "empty_prompt.safetensors"))
        log.info("transformers is not installed: wrote a random empty_prompt.safetensors, no text-encoder weights")
    else:
        from ldpm.models.latent import save_empty_prompt

        _seeded(seed, 3)
        cfg = {k: v for k, v in SD21_BASE_TEXT_ENCODER.items() if k not in ("architectures", "model_type")}
        CLIPTextModel(CLIPTextConfig(**cfg)).save_pretrained(sd / "text_encoder", safe_serialization=True)
        _write_json(sd / "text_encoder" / "config.json", SD21_BASE_TEXT_ENCODER)
        save_empty_prompt(sd)
    return sd


# ------------------------------------------------------------------------------------------------ weights
VGG16_FILE, VGG19_FILE = "vgg16-397923af.pth", "vgg19-dcbb9e9d.pth"
UNET_FILE, VARNET_FILE = "brain_leaderboard_state_dict_unet.pt", "brain_leaderboard_state_dict_varnet.pt"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def inception_state_dict() -> dict[str, torch.Tensor]:
    """A random state dict in the key layout of torch-fidelity's FeatureExtractorInceptionV3 (its own modules).

    With default init and BatchNorm's default running statistics the 2048-d features vanish (~1e-7: every rFID
    would read 0), so the running statistics are set from random images (BatchNorm in train mode, cumulative
    average): features of order 1 that differ between images, as the real network's do."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    class Captured(Exception):
        pass

    def stop(*args, **kwargs):
        raise Captured

    ext = fe.FeatureExtractorInceptionV3.__new__(fe.FeatureExtractorInceptionV3)
    with mock.patch.object(fe, "load_state_dict_from_url", stop):  # every module is built before the loader runs
        try:
            fe.FeatureExtractorInceptionV3.__init__(ext, "inception-v3-compat", ["2048"])
        except Captured:
            state = {k: v.clone() for k, v in ext.state_dict().items()}
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: state):
        ext = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    bns = [m for m in ext.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        for _ in range(2):
            ext(torch.randint(0, 256, (8, 3, 299, 299), dtype=torch.uint8))
    return {k: v.clone() for k, v in ext.state_dict().items()}


def write_weights(out: Path, seed: int) -> Path:
    """VGG16/19 (torchvision), fastMRI official U-Net / VarNet (paper sizes, plain state dicts as fastMRI
    publishes them), LPIPS AlexNet trunk (torchvision keys) and Inception-v3 (torch-fidelity keys): all random."""
    import torchvision
    from fastmri.models import Unet, VarNet

    from ldpm.weights import PAPER_UNET, PAPER_VARNET

    weights = out / "weights"
    (weights / "fastmri").mkdir(parents=True, exist_ok=True)
    makers = [
        (VGG16_FILE, lambda: torchvision.models.vgg16(weights=None).state_dict()),
        (VGG19_FILE, lambda: torchvision.models.vgg19(weights=None).state_dict()),
        (f"fastmri/{UNET_FILE}", lambda: Unet(in_chans=1, out_chans=1, **PAPER_UNET).state_dict()),
        (f"fastmri/{VARNET_FILE}", lambda: VarNet(**PAPER_VARNET).state_dict()),
        (ALEXNET_FILE, lambda: torchvision.models.alexnet(weights=None).state_dict()),
        (INCEPTION_FILE, inception_state_dict),
    ]
    for i, (name, make) in enumerate(makers):
        _seeded(seed, 10 + i)
        torch.save(make(), weights / name)
    return weights


# ------------------------------------------------------------------------------------------------ raw data
@dataclasses.dataclass(frozen=True)
class PlannedVolume:
    role: str            # "train" | "val" | "test" (the split its subject lands in) | "knee" | "heldout"
    acquisition: str
    field_T: float       # as fastMRI's headers report it (1.494 / 2.89362)
    n_coils: int
    shape: tuple[int, int]  # k-space (rows = readout, columns = phase encode)
    slices: int


T15, T3 = 1.494, 2.89362
# Folders besides rehearsal/brain: the knee (OOD column) and a held-out brain subject for the official-weight rows
# (configs/rehearsal-official.yaml: a `role: test` dataset, which the official fastMRI weights never saw).
FOLDERS = {"knee": "knee", "heldout": "brain_heldout"}
PROFILES = {
    # The GPU rehearsal: 16-slice volumes at fastMRI brain sizes; the test subject has every acquisition and both
    # field strengths, so every Table III column of configs/paper.yaml has test volumes.
    "full": [
        PlannedVolume("train", "AXT2", T3, 20, (640, 320), 16),
        PlannedVolume("train", "AXFLAIR", T15, 16, (640, 320), 16),
        PlannedVolume("val", "AXT1POST", T3, 16, (640, 320), 16),
        PlannedVolume("test", "AXFLAIR", T15, 16, (640, 320), 8),
        PlannedVolume("test", "AXT1", T3, 16, (768, 396), 8),
        PlannedVolume("test", "AXT1PRE", T15, 20, (640, 320), 8),
        PlannedVolume("test", "AXT1POST", T3, 16, (640, 288), 8),
        PlannedVolume("test", "AXT2", T15, 16, (640, 320), 8),
        PlannedVolume("knee", "CORPD_FBK", T3, 15, (640, 368), 8),
        PlannedVolume("heldout", "AXFLAIR", T3, 16, (640, 320), 8),
    ],
    # 2 CPU cores: 4 slices per file, so the paper's drop of the last 3 leaves one: one training slice (one step per
    # epoch at batch 1), one validation slice, 2 brain test slices (rFID/KID need 2) and one knee slice.
    "cpu": [
        PlannedVolume("train", "AXT2", T3, 20, (640, 320), 4),
        PlannedVolume("val", "AXFLAIR", T15, 16, (640, 320), 4),
        PlannedVolume("test", "AXT1", T3, 16, (768, 396), 4),
        PlannedVolume("test", "AXT1POST", T15, 16, (640, 288), 4),
        PlannedVolume("knee", "CORPD_FBK", T3, 15, (640, 368), 4),
        PlannedVolume("heldout", "AXFLAIR", T3, 16, (640, 320), 4),
    ],
}


def _crop_image_axis(kspace: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Centre-crop the image along one k-space axis (centred inverse FFT, crop, centred FFT): a smaller field of
    view at the same resolution, as fastMRI's narrower / shorter acquisitions."""
    x = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(kspace, axes=axis), axis=axis, norm="ortho"), axes=axis)
    start = (x.shape[axis] - size) // 2
    x = np.take(x, np.arange(start, start + size), axis=axis)
    k = np.fft.fftshift(np.fft.fft(np.fft.ifftshift(x, axes=axis), axis=axis, norm="ortho"), axes=axis)
    return k.astype(np.complex64)


def subject_ids(n: int) -> list[str]:
    return [f"rehearsal{i:03d}" for i in range(n)]


def split_roles(val_fraction: float, test_fraction: float, seed: int, n_subjects: int = 3) -> dict[str, str]:
    """{patient_id: split} as ldpm.data.preprocess.assign_splits will assign these subjects, so the planned test
    subject is the one the pipeline holds out."""
    from ldpm.data.preprocess import assign_splits

    ids = subject_ids(n_subjects)
    index = pd.DataFrame({"role": "in_distribution", "patient_id": ids})
    return dict(zip(ids, assign_splits(index, val_fraction, test_fraction, seed)))


def write_raw(out: Path, profile: str, seed: int, split: dict) -> list[Path]:
    """The brain and knee files of `profile` (see PROFILES), fastMRI multicoil layout."""
    from ldpm.data import embedded as emb
    from ldpm.data.ismrmrd import build_header
    from ldpm.data.preprocess import volume_slices

    roles = split_roles(split["val_fraction"], split["test_fraction"], seed)
    by_role = {}
    for pid, role in roles.items():
        by_role.setdefault(role, pid)  # one subject per split is enough; the others stay unused (none made)
    if set(by_role) != {"train", "val", "test"}:
        raise RuntimeError(f"assign_splits gave {roles}; expected a train, a val and a test subject")
    written = []
    for i, vol in enumerate(PROFILES[profile]):
        knee = vol.role == "knee"
        pid = f"rehearsal-{vol.role}000" if vol.role in FOLDERS else by_role[vol.role]
        rows, cols = vol.shape
        matrix = max(cols, rows // 2)  # the generator makes (2N, N) k-space; larger, then cropped in image space
        matrix += matrix % 2
        rng = np.random.default_rng([seed, 500, i])
        subject = emb._draw_subject(i, anatomy="robex" if knee else "mni", field_strength_T=vol.field_T,
                                    slices=vol.slices, rng=rng, patient_id=pid)
        anatomy = emb.subject_slices(subject, slices=vol.slices, matrix=matrix)
        volume = emb.generate_volume(subject, "AXT1" if knee else vol.acquisition, anatomy=anatomy,
                                     n_coils=vol.n_coils, rng=rng, name="")
        kspace = volume.kspace
        if kspace.shape[-2] != rows:
            kspace = _crop_image_axis(kspace, -2, rows)
        if kspace.shape[-1] != cols:
            kspace = _crop_image_axis(kspace, -1, cols)
        rss = volume_slices(kspace, 320, 320).numpy().astype(np.float32)  # fastMRI's 320 x 320 recon
        protocol = {"protocol_name": "COR PD FBK" if knee else emb.protocol_for(vol.acquisition, vol.field_T)
                    .header()["protocol_name"]}
        header = build_header(field_strength_T=vol.field_T, system_model=subject.system_model,
                              system_vendor=emb.VENDOR, encoded_shape=(rows, cols), recon_shape=(320, 320),
                              n_coils=vol.n_coils, fov_mm=(emb.FOV_MM, emb.FOV_MM),
                              slice_thickness_mm=emb.SLICE_GAP_MM, n_slices=vol.slices, protocol=protocol)
        attrs = {"acquisition": vol.acquisition, "max": float(rss.max()), "norm": float(np.linalg.norm(rss)),
                 "patient_id": pid}
        kind = "knee" if knee else "brain"
        name = f"file_{kind}_{vol.acquisition}_{rows}x{cols}_{vol.n_coils}coils_{i:02d}"
        path = out / FOLDERS.get(vol.role, "brain") / f"{name}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(emb.write_volume(path, emb.Volume(name, kspace, rss, header, attrs)))
        log.info("%s: %s %s, %d coils, %d slices, %.1f T, subject %s (%s)", path.name, vol.acquisition,
                 kspace.shape[-2:], vol.n_coils, vol.slices, vol.field_T, pid, vol.role)
    return written


# ------------------------------------------------------------------------------------------------ manifest
def write_manifest(folder: Path, what: str) -> Path:
    """folder/STAND-IN.json: the statement and the sha256 of every file under the folder."""
    from ldpm.io import sha256_file

    files = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != STAND_IN_MANIFEST}
    path = folder / STAND_IN_MANIFEST
    _write_json(path, {"stand_in": True, "statement": STANDIN_STATEMENT, "what": what, "files": files})
    return path


def generate(out: str | Path, profile: str = "cpu", seed: int = 0, split: dict | None = None) -> Path:
    """Every stand-in input under `out` (see the module docstring). `split` = data.split of the config the
    rehearsal runs (default: configs/paper.yaml's fractions)."""
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: expected one of {', '.join(PROFILES)}")
    out = Path(out)
    t0 = time.perf_counter()
    split = split or {"val_fraction": 0.1, "test_fraction": 0.04}
    write_raw(out, profile, seed, split)
    for folder in ("brain", *FOLDERS.values()):
        write_manifest(out / folder, f"simulated fastMRI multicoil files ({profile} profile)")
    write_manifest(write_sd(out, seed), "stable-diffusion-2-1-base architectures with random weights")
    write_manifest(write_weights(out, seed), "VGG16/19, fastMRI U-Net/VarNet, AlexNet, Inception-v3: random")
    _write_json(out / STAND_IN_MANIFEST, {"stand_in": True, "statement": STANDIN_STATEMENT, "profile": profile,
                                 "seed": seed})
    log.info("rehearsal inputs (%s profile) in %.0f s -> %s", profile, time.perf_counter() - t0, out)
    return out
