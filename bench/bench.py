"""Performance harness (not a test): ratios measured side by side in one run, written to bench/results.md.

P1  LDPM (Dual-Stage Sampler) vs Score-MRI per 320² slice at the paper's architectures with random weights:
    FLOPs of each component counted once with torch.utils.flop_counter, seconds measured for a few calls of each,
    both scaled by how often a slice needs them. Goal: LDPM ≥ 20× cheaper.
P2  Preprocessing throughput vs the floor (h5 read + ifft + RSS in plain numpy) on the same raw files. Goal ≥ 0.5×.
P3  End-to-end default pipeline from clean, and the no-op rerun (optional: --p3, takes the full pipeline time).

Each P1 measurement runs in its own process so its peak resident memory (ru_maxrss) is its own.
Run: .venv/bin/python bench/bench.py [--p1] [--p2] [--p3] [--device auto]   (no flag = P1 and P2)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "bench" / "results.md"
RESULTS_JSON = REPO / "bench" / "results.json"


# ------------------------------------------------------------------------------------------------------ P1
def _count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _seconds(fn, repeats: int, sync) -> float:
    fn()  # warm-up (allocations, kernel selection)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def _components(method: str, device_name: str, repeats: int) -> dict:
    """{component: (flops, seconds)} for one 320² slice, random weights, paper architectures."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ldpm.models.latent import SD21_BASE_UNET_CONFIG, SD21_BASE_VAE_CONFIG, decode, encode
    from ldpm.train import resolve_device

    torch.manual_seed(0)
    dev = resolve_device(device_name)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    x = torch.rand(1, 1, 320, 320, device=dev)
    out = {}

    def measure(name, fn, grad=False):
        ctx = torch.enable_grad if grad else torch.no_grad
        with ctx():
            out[name] = (_count(fn), _seconds(fn, repeats, sync))

    if method == "ldpm":
        from ldpm.models.mrcontrolnet import MRControlNet
        from ldpm.models.swinir import build_swinir
        from ldpm.sampling.dual_stage import kspace_loss

        vae = AutoencoderKL(**SD21_BASE_VAE_CONFIG).to(dev).eval()
        model = MRControlNet(UNet2DConditionModel(**SD21_BASE_UNET_CONFIG)).to(dev).eval()
        sketch = build_swinir("paper").to(dev).eval()
        prompt = torch.zeros(1, 77, 1024, device=dev)
        with torch.no_grad():
            z = encode(vae, x)
        mask = torch.ones(1, 1, 1, 320, device=dev)

        def guidance():  # eq. 10-11: decode, k-space loss, gradient back to the latent
            zz = z.detach().requires_grad_(True)
            torch.autograd.grad(kspace_loss(decode(vae, zz), torch.zeros_like(x, dtype=torch.complex64),
                                            mask).sum(), zz)

        measure("sketcher", lambda: sketch(x))
        measure("mrcn_eps", lambda: model(z, torch.tensor([500], device=dev), z, prompt))
        measure("vae_encode", lambda: encode(vae, x))
        measure("vae_decode", lambda: decode(vae, z))
        measure("guidance", guidance, grad=True)
    else:
        from ldpm.baselines.score_mri import build_score_model

        net = build_score_model("paper", 320).to(dev).eval()
        sigma = torch.ones(1, device=dev)
        measure("score_eval", lambda: net(x, sigma).sample)
    return out


def _worker(method: str, device_name: str, repeats: int, queue) -> None:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    comps = _components(method, device_name, repeats)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    queue.put({"components": comps, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               "peak_gpu_gib": peak_gpu})


def _measure_in_subprocess(method: str, device: str, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(method, device, repeats, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def ldpm_schedule(num_steps: int, p: int) -> tuple[int, int]:
    """(steps with t > p: latent DC, steps with t ≤ p: guidance) on the sampler's spaced chain."""
    from ldpm.sampling.dual_stage import spaced_timesteps

    ts = spaced_timesteps(1000, num_steps).timesteps
    return int((ts > p).sum()), int((ts <= p).sum())


def p1(device: str, ldpm_steps: int, p: int, score_steps: int, n_corrector: int, repeats: int) -> dict:
    ldpm = _measure_in_subprocess("ldpm", device, repeats)
    score = _measure_in_subprocess("score_mri", device, repeats)
    n_dc, n_guid = ldpm_schedule(ldpm_steps, p)
    # per slice: sketcher once, encode c once; per step the MRCN ε; t > p: decode + re-encode (eq. 9);
    # t ≤ p: the guidance gradient (eqs. 10–11, decode forward + backward); a final decode.
    calls = {"sketcher": 1, "vae_encode": 1 + n_dc, "mrcn_eps": ldpm_steps, "vae_decode": n_dc + 1,
             "guidance": n_guid}
    c = ldpm["components"]
    ldpm_flops = sum(c[k][0] * n for k, n in calls.items())
    ldpm_sec = sum(c[k][1] * n for k, n in calls.items())
    evals = score_steps * (1 + n_corrector)  # predictor + corrector network evaluations per step
    score_flops, score_sec = score["components"]["score_eval"][0] * evals, score["components"]["score_eval"][1] * evals
    return {"ldpm": {"flops": ldpm_flops, "seconds": ldpm_sec, "calls": calls, "components": c,
                     "peak_rss_gib": ldpm["peak_rss_gib"], "peak_gpu_gib": ldpm["peak_gpu_gib"],
                     "steps": ldpm_steps, "p": p},
            "score_mri": {"flops": score_flops, "seconds": score_sec, "evals": evals,
                          "components": score["components"], "peak_rss_gib": score["peak_rss_gib"],
                          "peak_gpu_gib": score["peak_gpu_gib"], "steps": score_steps},
            "flop_ratio": score_flops / ldpm_flops, "time_ratio": score_sec / ldpm_sec}


# ------------------------------------------------------------------------------------------------------ P2
def p2(n_volumes: int) -> dict:
    import h5py
    import numpy as np

    from ldpm.data.embedded import generate_dataset
    from ldpm.data.preprocess import volume_slices

    with tempfile.TemporaryDirectory() as tmp:
        files = generate_dataset(tmp, n_subjects=max(3, n_volumes // 2), volumes_per_subject=2, slices_per_volume=16,
                                 n_coils=8, matrix=320, ood_subjects=0, seed=0)[:n_volumes]

        def floor():  # the least any preprocessing must do: read, inverse FFT per coil, RSS
            for f in files:
                with h5py.File(f) as fh:
                    k = fh["kspace"][()]
                img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
                np.sqrt((np.abs(img) ** 2).sum(axis=1))

        def ours():  # the pipeline's path: read, centred ifft + crop + RSS at 320², no resize (paper size)
            for f in files:
                with h5py.File(f) as fh:
                    k = fh["kspace"][()]
                volume_slices(k, 320, 320)

        floor(), ours()  # warm the page cache for both
        t_floor = min(_timed(floor) for _ in range(3))
        t_ours = min(_timed(ours) for _ in range(3))
    slices = 16 * len(files)
    return {"volumes": len(files), "slices": slices, "floor_slices_per_s": slices / t_floor,
            "ours_slices_per_s": slices / t_ours, "ratio": t_floor / t_ours}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------------ P3
def p3(workdir: str | None) -> dict:
    """The default pipeline from clean in `workdir` (kept, so its tables can be read; default: a temporary dir),
    then the same command again, which must find nothing to do."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir or tmp)
        if (work / "results").exists():
            raise SystemExit(f"bench: {work}/results exists; P3 times a run from clean, give an empty --p3-dir")
        work.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "config.yaml", work)
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", "all"]
        full = _timed(lambda: subprocess.run(cmd, check=True, env=env, capture_output=True))
        t0 = time.perf_counter()
        again = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        noop = time.perf_counter() - t0
        nothing_to_do = "Nothing to be done" in again.stdout + again.stderr
    return {"full_s": full, "noop_s": noop, "noop_nothing_to_do": nothing_to_do}


# ------------------------------------------------------------------------------------------------------ report
def _gf(flops: float) -> str:
    return f"{flops / 1e12:.2f} TFLOP"


def write_markdown(res: dict) -> str:
    lines = ["# Benchmarks", "", f"Machine: {res['machine']}. Generated by `bench/bench.py` on {res['date']}.", ""]
    if "p1" in res:
        r = res["p1"]
        l, s = r["ldpm"], r["score_mri"]
        lines += ["## P1: cost per 320² slice, paper architectures (random weights)", "",
                  f"LDPM: Dual-Stage Sampler with {l['steps']} spaced steps, p = {l['p']} "
                  f"({l['calls']['vae_decode'] - 1} latent-DC steps, {l['calls']['guidance']} guidance steps), "
                  f"SwinIR sketcher, SD-2-1-base VAE + U-Net + IRControlNet. Score-MRI: NCSN++-style U-Net, "
                  f"N = {s['steps']}, {s['evals']} network evaluations (predictor + corrector). FFTs are not counted.",
                  "", "| method | FLOPs / slice | s / slice (measured components × calls) | peak RSS (GiB) | "
                  "peak GPU (GiB) |", "|---|---|---|---|---|"]
        for name, m in (("LDPM", l), ("Score-MRI", s)):
            gpu = f"{m['peak_gpu_gib']:.1f}" if m["peak_gpu_gib"] is not None else "n/a (CPU run)"
            lines.append(f"| {name} | {_gf(m['flops'])} | {m['seconds']:.1f} | {m['peak_rss_gib']:.1f} | {gpu} |")
        goal = "met" if r["flop_ratio"] >= 20 else "NOT met"
        lines += ["", f"**Score-MRI / LDPM: {r['flop_ratio']:.1f}× in FLOPs, {r['time_ratio']:.1f}× in measured "
                  f"time** (goal ≥ 20×: {goal}).", "", "Components (FLOPs, seconds per call):", ""]
        for name, m in (("LDPM", l), ("Score-MRI", s)):
            for comp, (fl, sec) in m["components"].items():
                lines.append(f"- {name} {comp}: {_gf(fl)}, {sec:.2f} s")
        lines.append("")
    if "p2" in res:
        r = res["p2"]
        goal = "met" if r["ratio"] >= 0.5 else "NOT met"
        lines += ["## P2: preprocessing throughput vs floor", "",
                  f"{r['volumes']} volumes × 16 slices, 8 coils, 640×320 k-space (fastMRI brain size).", "",
                  f"- floor (h5 read + numpy ifft2 + RSS): {r['floor_slices_per_s']:.1f} slices/s",
                  f"- ours (h5 read + `volume_slices`: centred ifft per axis with the crop between, RSS): "
                  f"{r['ours_slices_per_s']:.1f} slices/s",
                  f"- **ratio {r['ratio']:.2f}×** (goal ≥ 0.5×: {goal})", ""]
    if "p3" in res:
        r = res["p3"]
        lines += ["## P3: end-to-end default pipeline (`snakemake --cores all`, config.yaml)", "",
                  f"- from clean: {r['full_s'] / 60:.1f} min",
                  f"- no-op rerun: {r['noop_s']:.1f} s (Snakemake said 'Nothing to be done': "
                  f"{r.get('noop_nothing_to_do', 'not recorded')})", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p1", action="store_true")
    ap.add_argument("--p2", action="store_true")
    ap.add_argument("--p3", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ldpm-steps", type=int, default=50, help="DSS steps (DiffBIR's default; the paper gives none)")
    ap.add_argument("--p", type=int, default=200)
    ap.add_argument("--score-steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--p2-volumes", type=int, default=4)
    ap.add_argument("--p3-dir", help="P3's working directory, kept afterwards (default: a temporary one)")
    a = ap.parse_args()
    if not (a.p1 or a.p2 or a.p3):
        a.p1 = a.p2 = True
    res = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    res |= {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {a.device}",
            "date": time.strftime("%Y-%m-%d")}
    if a.p1:
        res["p1"] = p1(a.device, a.ldpm_steps, a.p, a.score_steps, 1, a.repeats)
    if a.p2:
        res["p2"] = p2(a.p2_volumes)
    if a.p3:
        res["p3"] = p3(a.p3_dir)
    RESULTS_JSON.write_text(json.dumps(res, indent=1))
    RESULTS_MD.write_text(write_markdown(res))
    print(RESULTS_MD.read_text())


if __name__ == "__main__":
    main()
