"""Performance harness (not a test): ratios measured side by side in one run, written to bench/results.md.

P1  LDPM (Dual-Stage Sampler) vs Score-MRI per 320² slice at the paper's architectures with random weights:
    FLOPs of each component counted once with torch.utils.flop_counter, seconds measured for a few calls of each,
    both scaled by how often a slice needs them. Goal: LDPM ≥ 20× cheaper.
P2  The whole preprocessing stage (split, shard jobs, gather: h5 writes and normalisation included) as separate
    processes, with 1 and with 2 shard jobs at once (the speed-up is the ratio), and against the floor (h5 read +
    ifft + RSS in plain numpy, in-process) on the same raw files. Goal ≥ 0.5× of the floor.
P3  End-to-end default pipeline from clean, and the no-op rerun (optional: --p3, takes the full pipeline time).
P5  Classical CS (ldpm.baselines.cs, sigpy, 200 iterations, one coil) per slice at 320² and 64², beside P1's
    LDPM and Score-MRI (optional: --p5).
P6  The embedded default with both measurements (`measurements=[magnitude,multicoil]`, issue 21) from clean: its
    time, the protocol gap per method, and its magnitude outputs against a magnitude-only run's, byte for byte
    (optional: --p6 --p6-dir DIR [--p6-magnitude-dir DIR]; --p6-seconds S records a run already in DIR, timed
    outside, e.g. by /usr/bin/time).

Each P1 measurement runs in its own process so its peak resident memory (ru_maxrss) is its own.
Run: .venv/bin/python bench/bench.py [--p1] [--p2] [--p3] [--p5] [--p6] [--device auto]   (no flag = P1 and P2)
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

from rehearsal_table import machine  # bench/ is this script's directory: CPU model, memory, GPUs

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
JOB_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}  # Snakemake's, threads: 1


def _job(*argv: str) -> subprocess.Popen:
    """One `ldpm` stage in its own process, as a Snakemake job runs it (one thread)."""
    return subprocess.Popen([sys.executable, "-m", "ldpm", *argv], env=os.environ | JOB_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(*procs: subprocess.Popen) -> None:
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"bench: {proc.args[3]} failed: {err.strip().splitlines()[-1:]}")


def _stage(tmp: Path, index_csv: Path, n_shards: int) -> dict:
    """Seconds of the whole preprocessing stage as the workflow runs it: `ldpm split`, then n_shards
    `ldpm preprocess-shard` jobs at once (h5 reads, FFTs, normalisation, shard h5 writes), then `ldpm gather`
    (split h5 writes). The split's content-defined shards are replaced by n_shards equal runs of volumes (untimed)."""
    import json

    import pandas as pd

    from ldpm.data.preprocess import SHARD_DIR, read_index_text, shard_files, shard_rows_sha256

    work = tmp / f"shards{n_shards}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    pre = json.dumps({"crop_size": 320, "image_size": 320, "drop_last_slices": 0})
    t0 = time.perf_counter()
    _wait(_job("split", "--index", str(index_csv), "--params",
               json.dumps({"val_fraction": 0.2, "test_fraction": 0.2, "shard_size": 16}), "--out",
               str(work / "splits.csv")))
    t_split = time.perf_counter() - t0
    splits = pd.read_csv(work / "splits.csv")
    splits["shard"] = [f"s{i * n_shards // len(splits)}" for i in range(len(splits))]
    splits.to_csv(work / "splits.csv", index=False)
    text = read_index_text(index_csv)
    t0 = time.perf_counter()
    jobs = []  # started at once
    for shard, vols in splits.groupby("shard", sort=False)["volume"]:
        h5, csv = shard_files(work / SHARD_DIR, "brain", shard)  # the bench data is one dataset
        jobs.append(_job("preprocess-shard", "--index", str(index_csv), "--volumes", json.dumps(list(vols)),
                         "--rows-sha256", shard_rows_sha256(text, list(vols)), "--params", pre,
                         "--out-h5", str(h5), "--out-csv", str(csv)))
    _wait(*jobs)
    t_shards = time.perf_counter() - t0
    t0 = time.perf_counter()
    _wait(_job("gather", "--splits", str(work / "splits.csv"), "--out-dir", str(work)))
    t_gather = time.perf_counter() - t0
    return {"split_s": t_split, "shards_s": t_shards, "gather_s": t_gather,
            "total_s": t_split + t_shards + t_gather}


FFT_WORK = ("import numpy as np\nx = np.ones((8, 640, 320), np.complex64)\n"
            "for _ in range(150): np.fft.ifft(x, axis=-2)\n")


def _ceiling() -> float:
    """What 2 processes get on this machine now: the same FFT work in 1 process, then in 2 at once (each doing it
    once); 2 * t(1) / t(2) is 2 on two idle cores, less when other processes hold the cores."""
    def wall(n: int) -> float:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", FFT_WORK], env=os.environ | JOB_ENV) for _ in range(n)]
        for proc in procs:
            proc.wait()
        return time.perf_counter() - t0

    return 2 * wall(1) / wall(2)


def _one_volume_job(tmp: Path, index_csv: Path, volume: str) -> None:
    """A shard job of one volume: mostly what every shard job pays once (imports; the first volume's fresh memory,
    whose page faults make it several times slower than the volumes after it in the same process)."""
    import json

    from ldpm.data.preprocess import read_index_text, shard_rows_sha256

    _wait(_job("preprocess-shard", "--index", str(index_csv), "--volumes", json.dumps([volume]), "--rows-sha256",
               shard_rows_sha256(read_index_text(index_csv), [volume]), "--params",
               json.dumps({"crop_size": 320, "image_size": 320, "drop_last_slices": 0}),
               "--out-h5", str(tmp / "one.h5"), "--out-csv", str(tmp / "one.csv")))


def p2(n_volumes: int, repeats: int = 5, data_dir: str | None = None) -> dict:
    """The floor (in-process: read, ifft2, RSS) against the whole preprocessing stage run as its jobs, with 1 and
    with 2 shard jobs at once; min over `repeats` runs, 1 and 2 shards alternating. The raw files go to `data_dir`
    (kept, and reused by the next run with the same n_volumes) or to a temporary directory."""
    import h5py
    import numpy as np
    import pandas as pd

    from ldpm.data.embedded import generate_dataset
    from ldpm.data.preprocess import build_index

    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(data_dir or scratch)
        index_csv = tmp / "index.csv"
        if not (index_csv.exists() and len(pd.read_csv(index_csv)) == n_volumes):
            shutil.rmtree(tmp / "raw", ignore_errors=True)
            files = generate_dataset(tmp / "raw", n_subjects=max(3, n_volumes // 2), volumes_per_subject=2,
                                     slices_per_volume=16, n_coils=8, matrix=320, ood_subjects=0,
                                     seed=0)[:n_volumes]
            for extra in (tmp / "raw" / "brain").glob("*.h5"):
                if extra not in files:
                    extra.unlink()
            build_index({"brain": {"role": "in_distribution", "paths": [str(tmp / "raw" / "brain")]}}, [],
                        index_csv)
        files = [Path(f) for f in pd.read_csv(index_csv)["path"]]

        def floor():  # the least any preprocessing must do: read, inverse FFT per coil, RSS
            for f in files:
                with h5py.File(f) as fh:
                    k = fh["kspace"][()]
                img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
                np.sqrt((np.abs(img) ** 2).sum(axis=1))

        floor()  # warm the page cache
        t_floor = min(_timed(floor) for _ in range(repeats))
        runs, ceilings = {1: [], 2: []}, []
        _stage(tmp, index_csv, 1)  # warm-up: imports from disk, page cache
        one_volume = min(_timed(lambda: _one_volume_job(tmp, index_csv, files[0].stem)) for _ in range(repeats))
        load_before = os.getloadavg()[0]  # other work on the machine (shared cores) slows the 2-shard runs most
        for _ in range(repeats):
            ceilings.append(_ceiling())
            for n in runs:
                runs[n].append(_stage(tmp, index_csv, n))
    best = {n: min(r, key=lambda x: x["total_s"]) for n, r in runs.items()}
    slices = 16 * len(files)
    return {"volumes": len(files), "slices": slices, "floor_slices_per_s": slices / t_floor,
            "stage": {str(n): b for n, b in best.items()},
            "ours_slices_per_s": slices / best[1]["total_s"], "ratio": t_floor / best[1]["total_s"],
            "shard_speedup": best[1]["shards_s"] / best[2]["shards_s"],
            "stage_speedup": best[1]["total_s"] / best[2]["total_s"], "cores": os.cpu_count(),
            "load_before": load_before, "load_after": os.getloadavg()[0], "ceiling": max(ceilings),
            "ceilings": ceilings, "repeats": repeats, "one_volume_job_s": one_volume}


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


# ------------------------------------------------------------------------------------------------------ P6
BOTH = "measurements=[magnitude,multicoil]"
NOT_COMPARED = ("logs", "benchmarks", "provenance", "checkpoints")  # wall times, dates, job logs: run records
MEASURED_COLUMNS = ["s/slice", "peak RSS (GiB)", "peak GPU (GiB)"]  # the compute table's measurements
EXPECTED_DIFFERENT = {"report.html": " (as it should: this run's report also holds the multicoil tables and the "
                                     "protocol gap, and its config hash is another)"}


def p6(workdir: str, magnitude_dir: str | None, seconds: float | None) -> dict:
    """The default with both measurements from clean in `workdir` (timed here; or, with `seconds`, a finished run
    already there, timed outside), the protocol gap tables it wrote, and with `magnitude_dir` (a magnitude-only
    run of the same default) the comparison of every output that run wrote (`compare_outputs`)."""
    import pandas as pd

    work = Path(workdir)
    if seconds is None:
        if (work / "results").exists():
            raise SystemExit(f"bench: {work}/results exists; P6 times a run from clean (or give --p6-seconds)")
        work.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "config.yaml", work)
        env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", "all",
               "--config", BOTH]
        seconds = _timed(lambda: subprocess.run(cmd, check=True, env=env, capture_output=True))
    gaps = {path.stem: pd.read_csv(path).to_dict("records")
            for path in sorted((work / "results/tables").glob("protocol_gap_*.csv"))}
    if not gaps:
        raise SystemExit(f"bench: no {work}/results/tables/protocol_gap_*.csv; run the default with --config {BOTH}")
    out = {"seconds": seconds, "gaps": gaps}
    if magnitude_dir:
        out["comparison"] = compare_outputs(Path(magnitude_dir) / "results", work / "results")
    return out


def compare_outputs(magnitude: Path, both: Path) -> dict:
    """Every file the magnitude-only run wrote (run records left out: `NOT_COMPARED`) against the same path in the
    run with both measurements: identical bytes; equal but for what was measured (h5 files whose datasets are
    identical, attributes hold a reconstruction's seconds and memory per slice; compute tables whose columns other
    than `MEASURED_COLUMNS` are identical, their .md/.tex the same table as the .csv); different; missing."""
    import h5py
    import pandas as pd

    def h5_data(path: Path) -> dict:
        with h5py.File(path) as fh:
            return {name: fh[name][()].tobytes() for name in fh}

    def compute_table(path: Path) -> pd.DataFrame:
        return pd.read_csv(path.with_suffix(".csv"), index_col=0).drop(columns=MEASURED_COLUMNS)

    def equal_but_measured(path: Path, other: Path) -> bool:
        if path.suffix == ".h5":
            return h5_data(path) == h5_data(other)
        if path.parent.name == "tables" and path.name.startswith("compute_"):
            return compute_table(path).equals(compute_table(other))
        return False

    result = {"identical": [], "equal_but_measured": [], "different": [], "missing": []}
    for path in sorted(p for p in magnitude.rglob("*") if p.is_file()):
        rel = path.relative_to(magnitude)
        if rel.parts[0] in NOT_COMPARED:
            continue
        other = both / rel
        if not other.exists():
            result["missing"].append(str(rel))
        elif path.read_bytes() == other.read_bytes():
            result["identical"].append(str(rel))
        elif equal_but_measured(path, other):
            result["equal_but_measured"].append(str(rel))
        else:
            result["different"].append(str(rel))
    return result


def p6_markdown(r: dict) -> list[str]:
    lines = ["## P6: the embedded default under both measurements (issue 21)", "", *measured_on(r),
             f"`snakemake --cores all --config '{BOTH}'` from clean: **{r['seconds'] / 60:.1f} min**.",
             *([r["note"]] if r.get("note") else []), ""]
    for name, rows in r["gaps"].items():
        lines += [f"Protocol gap ({name}): each method's mean over test subjects under the paper's magnitude "
                  "simulation and under the raw multicoil k-space, the gap multicoil − magnitude with its 95 % "
                  "bootstrap CI over subjects, and the rank under each.", "",
                  "| method | metric | magnitude | multicoil | gap | gap CI | rank mag. | rank multi. |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in rows:
            f = ".2f" if row["metric"] == "psnr" else ".4f"
            lines.append(f"| {row['method']} | {row['metric']} | {row['magnitude']:{f}} | {row['multicoil']:{f}} | "
                         f"{row['gap']:+{f}} | [{row['gap_ci_low']:+{f}}, {row['gap_ci_high']:+{f}}] | "
                         f"{row['rank_magnitude']:.0f} | {row['rank_multicoil']:.0f} |")
        lines.append("")
    if "comparison" in r:
        c = r["comparison"]
        lines += [f"Against a magnitude-only run of the same default, every file it wrote (run records left out: "
                  f"{', '.join(NOT_COMPARED)}): {len(c['identical'])} identical to the byte, "
                  f"{len(c['equal_but_measured'])} equal but for measured seconds and memory (h5 datasets identical, "
                  f"attributes differ; compute tables identical but for {', '.join(MEASURED_COLUMNS)}), "
                  f"{len(c['different'])} different, {len(c['missing'])} missing.", ""]
        lines += [f"- different: `{name}`{EXPECTED_DIFFERENT.get(name, '')}" for name in c["different"]]
        lines += [f"- missing: `{name}`" for name in c["missing"]]
        lines.append("")
    return lines


# ------------------------------------------------------------------------------------------------------ report
def _gf(flops: float) -> str:
    return f"{flops / 1e12:.2f} TFLOP"


def measured_on(r: dict) -> list[str]:
    """Where and when one part was measured (parts run at different times, on different machines)."""
    return [f"Measured {r['date']} on {r['machine']}.", ""] if "machine" in r else []


def write_markdown(res: dict) -> str:
    lines = ["# Benchmarks", "", f"Machine: {res['machine']}. Generated by `bench/bench.py` on {res['date']}.", ""]
    if "p1" in res:
        r = res["p1"]
        l, s = r["ldpm"], r["score_mri"]
        lines += ["## P1: cost per 320² slice, paper architectures (random weights)", "", *measured_on(r),
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
        lines += ["## P2: the whole preprocessing stage, as sharded jobs", "", *measured_on(r)]
        if "stage" not in r:  # a result of the earlier P2 (volume_slices alone)
            lines += [f"Older result format (bench before sharding): ratio {r['ratio']:.2f}×; rerun `--p2`.", ""]
        else:
            one, two = r["stage"]["1"], r["stage"]["2"]
            goal = "met" if r["ratio"] >= 0.5 else "NOT met"
            lines += [
                f"{r['volumes']} volumes × 16 slices, 8 coils, 640×320 k-space (fastMRI brain size), 320² images. "
                f"The stage as the workflow runs it, each job its own `python -m ldpm` process with one thread "
                f"(as Snakemake runs it): `split`, the `preprocess-shard` jobs at once (h5 read, FFTs, crop, RSS, "
                f"per-volume normalisation, shard h5 write), `gather` (split h5 writes). Best of {r['repeats']} runs; "
                f"{r['cores']} CPU cores, load average {r['load_before']:.1f} before the runs and "
                f"{r['load_after']:.1f} after (other processes on the same cores).", "",
                "| shard jobs at once | split (s) | shards (s) | gather (s) | stage (s) |", "|---|---|---|---|---|",
                *[f"| {n} | {x['split_s']:.1f} | {x['shards_s']:.1f} | {x['gather_s']:.1f} | {x['total_s']:.1f} |"
                  for n, x in (("1", one), ("2", two))], "",
                f"- **2 shards vs 1: {r['shard_speedup']:.2f}× on the shard jobs, {r['stage_speedup']:.2f}× on the "
                f"whole stage** (split and gather are one job each)",
                f"- what 2 processes got on this machine during the runs (the same FFT work in 1, then 2 processes, "
                f"before each pair of runs): best {r['ceiling']:.2f}×, all "
                f"{', '.join(f'{c:.2f}' for c in r['ceilings'])}",
                f"- a shard job of one volume takes {r['one_volume_job_s']:.1f} s: mostly what every shard job pays "
                f"once (imports; page faults on the first volume's fresh memory); here {r['volumes']} volumes in one "
                f"job or {r['volumes'] // 2} in each of two, data.shard_size 64 in the paper config",
                f"- floor (in-process h5 read + numpy ifft2 + RSS, no writes): {r['floor_slices_per_s']:.1f} slices/s",
                f"- the whole stage with 1 shard: {r['ours_slices_per_s']:.1f} slices/s, **ratio {r['ratio']:.2f}×** "
                f"to the floor (goal ≥ 0.5×: {goal})", ""]
    if "p3" in res:
        r = res["p3"]
        lines += ["## P3: end-to-end default pipeline (`snakemake --cores all`, config.yaml)", "", *measured_on(r),
                  f"- from clean: {r['full_s'] / 60:.1f} min",
                  f"- no-op rerun: {r['noop_s']:.1f} s (Snakemake said 'Nothing to be done': "
                  f"{r.get('noop_nothing_to_do', 'not recorded')})", ""]
    lines += p4_markdown(res["p4"]) if "p4" in res else []
    lines += p5_markdown(res["p5"], res.get("p1")) if "p5" in res else []
    lines += p6_markdown(res["p6"]) if "p6" in res else []
    lines += ["## Paper-path rehearsal", "", "`bash bench/rehearsal.sh cpu|gpu WORKDIR --record` writes its own record: "
              "bench/rehearsal-cpu.md (2 CPU cores) and bench/rehearsal-gpu.md, with per-rule peak memory in "
              "bench/rehearsal-*-peaks.csv.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p1", action="store_true")
    ap.add_argument("--p2", action="store_true")
    ap.add_argument("--p3", action="store_true")
    ap.add_argument("--p4", action="store_true", help="training peak RSS at two training-set sizes")
    ap.add_argument("--p5", action="store_true", help="classical CS seconds per slice at 320² and 64²")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ldpm-steps", type=int, default=50, help="DSS steps (DiffBIR's default; the paper gives none)")
    ap.add_argument("--p", type=int, default=200)
    ap.add_argument("--score-steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--p2-volumes", type=int, default=16, help="3.4 GB of raw files in a temporary directory")
    ap.add_argument("--p2-dir", help="P2's raw data directory, kept and reused (default: a temporary one)")
    ap.add_argument("--p3-dir", help="P3's working directory, kept afterwards (default: a temporary one)")
    ap.add_argument("--p6", action="store_true", help="the default under both measurements: time, protocol gap")
    ap.add_argument("--p6-dir", help="P6's working directory (empty: the run is timed here)")
    ap.add_argument("--p6-magnitude-dir", help="a magnitude-only run of the default, to compare outputs against")
    ap.add_argument("--p6-seconds", type=float, help="P6: the run in --p6-dir is finished; its time, measured outside")
    ap.add_argument("--p6-note", default="", help="P6: how the time was measured, where it was not on an idle box")
    a = ap.parse_args()
    if a.p6 and not a.p6_dir:
        ap.error("--p6 needs --p6-dir")
    if not (a.p1 or a.p2 or a.p3 or a.p4 or a.p5 or a.p6):
        a.p1 = a.p2 = True
    res = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    res |= {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {a.device}",
            "date": time.strftime("%Y-%m-%d")}
    where = {"machine": f"{machine()}, device {a.device}", "date": res["date"]}
    if a.p1:
        res["p1"] = p1(a.device, a.ldpm_steps, a.p, a.score_steps, 1, a.repeats) | where
    if a.p2:
        res["p2"] = p2(a.p2_volumes, data_dir=a.p2_dir) | where
    if a.p3:
        res["p3"] = p3(a.p3_dir) | where
    if a.p4:
        res["p4"] = p4() | where
    if a.p5:
        res["p5"] = p5() | where
    if a.p6:
        res["p6"] = p6(a.p6_dir, a.p6_magnitude_dir, a.p6_seconds) | where | {"note": a.p6_note}
    RESULTS_JSON.write_text(json.dumps(res, indent=1))
    RESULTS_MD.write_text(write_markdown(res))
    print(RESULTS_MD.read_text())


# ------------------------------------------------------------------------------------------------------ P4
P4_HP = {"chans": 2, "num_pool_layers": 1, "drop_prob": 0.0, "lr": 1e-3, "batch_size": 128, "ckpt_every": 1000}


def _p4_train_h5(path: Path, n: int, size: int) -> None:
    """A training set of n random size² slices in preprocess's layout (dataset `images`, one HDF5 chunk per
    slice), written in blocks so this process never holds it whole."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(n)
    with h5py.File(path, "w") as fh:
        images = fh.create_dataset("images", shape=(n, size, size), dtype=np.float32, chunks=(1, size, size))
        for start in range(0, n, 256):
            images[start:start + 256] = rng.random((min(256, n - start), size, size), dtype=np.float32)


def _p4_peak_rss(cmd: list[str], log: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one child process, from its own rusage (os.wait4), not the max over all
    children; its output goes to `log`."""
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=os.environ | {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench P4: {' '.join(cmd[:5])} failed:\n{log.read_text()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds  # Linux: KiB


def p4(sizes: tuple[int, ...] = (256, 4096), size: int = 128) -> dict:
    """Peak RSS of one real training job (`python -m ldpm train unet`, CPU, a tiny U-Net) on training sets of
    `sizes` slices, each job the same number of optimiser steps (one epoch of the largest set; more epochs of the
    smaller ones), so only the size of the training file differs. Training reads each batch from the h5
    (ldpm.io.SliceFile): the peak must not grow with the number of slices; holding the set in memory would add
    (difference in slices) × size² × 4 bytes."""
    batch = P4_HP["batch_size"]
    steps = -(-max(sizes) // batch)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            data = Path(tmp) / f"train{n}.h5"
            _p4_train_h5(data, n, size)
            epochs = steps // -(-n // batch)
            if epochs * -(-n // batch) != steps:
                raise SystemExit(f"bench P4: {n} slices do not make {steps} steps of {batch} in whole epochs")
            cmd = [sys.executable, "-m", "ldpm", "train", "unet", "--inputs", json.dumps({"train": str(data)}),
                   "--out", str(Path(tmp) / f"unet{n}.safetensors"), "--ckpt-dir", str(Path(tmp) / f"ck{n}"),
                   "--hp", json.dumps(P4_HP | {"epochs": epochs}),
                   "--masks", json.dumps({"accelerations": [4], "center_fractions": [0.08]}),
                   "--seed", "0", "--device", "cpu", "--val-slices", "0"]
            rss, seconds = _p4_peak_rss(cmd, Path(tmp) / f"train{n}.log")
            runs[str(n)] = {"slices": n, "data_mib": n * size * size * 4 / 2**20, "peak_rss_mib": rss,
                            "epochs": epochs, "steps": steps, "seconds": seconds}
    small, large = runs[str(min(sizes))], runs[str(max(sizes))]
    return {"image_size": size, "hp": P4_HP, "runs": runs, "ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
            "growth_mib": large["peak_rss_mib"] - small["peak_rss_mib"],
            "in_memory_growth_mib": large["data_mib"] - small["data_mib"]}


def p4_markdown(r: dict) -> list[str]:
    runs = sorted(r["runs"].values(), key=lambda x: x["slices"])
    return ["## P4: training memory vs training-set size", "", *measured_on(r),
            f"One real training job per set (`python -m ldpm train unet`, CPU, one thread, U-Net chans "
            f"{r['hp']['chans']} with {r['hp']['num_pool_layers']} pool, batch {r['hp']['batch_size']}, no "
            f"validation) on random {r['image_size']}² training sets in preprocess's h5 layout (one chunk per "
            f"slice); every job takes the same number of steps (more epochs of the smaller set). Peak RSS of the "
            f"job's process (its own ru_maxrss). Training reads each batch from the file (`ldpm.io.SliceFile`).", "",
            "| training slices | data (MiB) | epochs × steps | peak RSS (MiB) | s |", "|---|---|---|---|---|",
            *[f"| {x['slices']} | {x['data_mib']:.0f} | {x['epochs']} × {x['steps'] // x['epochs']} | "
              f"{x['peak_rss_mib']:.0f} | {x['seconds']:.1f} |" for x in runs], "",
            f"- **{runs[-1]['slices']} vs {runs[0]['slices']} slices: peak RSS ×{r['ratio']:.3f} "
            f"({r['growth_mib']:+.0f} MiB)**; holding the training set in memory would add "
            f"{r['in_memory_growth_mib']:.0f} MiB", ""]



# ------------------------------------------------------------------------------------------------------ P5
def p5(sizes: tuple[int, ...] = (320, 64), iterations: int = 200, batch: int = 4, repeats: int = 2) -> dict:
    """Seconds per slice of both CS rows on a real anatomy slice (nilearn's MNI152 mid-axial GM + WM maps, the
    embedded data's source), AF 8 random mask, λ 0.01:
    `batch` slices per solve. Best of `repeats`, after a warm-up (numba compiles)."""
    import numpy as np
    from skimage.transform import resize

    from ldpm.baselines.cs import cs_reconstruct
    from ldpm.data.embedded import mni_template
    from ldpm.data.masks import sample_mask

    maps = mni_template().maps
    plane = (maps["gm"] * 0.6 + maps["wm"] * 1.0)[:, :, maps["gm"].shape[2] // 2].astype(np.float32)
    out = {}
    for size in sizes:
        image = resize(plane, (size, size))
        image /= image.max()
        mask = sample_mask(size, 8, 0.04, seed=0, mask_type="random").astype(np.float32)
        k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho")) * mask
        k_u = np.broadcast_to(k, (batch, 1, size, size)).copy()
        for prior in ("tv", "wavelet"):
            cs_reconstruct(k_u[:1], mask, 0.01, prior, 2)
            seconds = min(_timed(lambda: cs_reconstruct(k_u, mask, 0.01, prior, iterations)) for _ in range(repeats))
            out[f"{prior}_{size}"] = seconds / batch
    return {"iterations": iterations, "batch": batch, "seconds_per_slice": out}


def p5_markdown(r: dict, p1_result: dict | None) -> list[str]:
    t = r["seconds_per_slice"]
    lines = ["## P5: classical compressed sensing per slice (`cs_tv`, `cs_wavelet`)", "", *measured_on(r),
             f"sigpy on numpy (CPU; one coil, map of ones), {r['iterations']} iterations, {r['batch']} slices per "
             f"solve (the wavelet and FFT work dominates, so the cost per slice hardly depends on the batch), λ 0.01, "
             f"AF 8 random mask, a mid-axial MNI152 slice (nilearn). "
             f"Seconds per slice; LDPM and Score-MRI from P1 (paper architectures, measured components × calls).", "",
             "| method | 320² (s / slice) | 64² (s / slice) |", "|---|---|---|",
             f"| CS-TV | {t['tv_320']:.3f} | {t['tv_64']:.4f} |",
             f"| CS-wavelet (db4) | {t['wavelet_320']:.3f} | {t['wavelet_64']:.4f} |"]
    if p1_result:
        lines += [f"| LDPM (P1) | {p1_result['ldpm']['seconds']:.1f} | |",
                  f"| Score-MRI (P1) | {p1_result['score_mri']['seconds']:.1f} | |"]
    return lines + [""]


if __name__ == "__main__":
    main()
