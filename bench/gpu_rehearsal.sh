#!/usr/bin/env bash
# GPU rehearsal of the paper path (issue 14): configs/paper.yaml + configs/rehearsal.yaml (every paper value but the
# amounts of work: 1 epoch per stage, Score-MRI N = 2, 2 Dual-Stage Sampler steps) at the paper's batch sizes, on
# the `full` stand-in inputs of `ldpm rehearsal-inputs` (random weights in the real architectures, simulated fastMRI
# files at the real sizes: 3 brain subjects, 9 volumes, a test subject with every Table III column). Nothing it
# computes is a result; it proves the paper path (and its GPU memory at the paper's batch sizes) before GPU days.
#
#   bench/gpu_rehearsal.sh [WORKDIR]        (default /tmp/ldpm-gpu-rehearsal; run from anywhere, in the ldpm env)
#
# Run 1: device=cuda (bf16 autocast is automatic on CUDA), train_processes: 1, the whole workflow to
#        results/report.html. Run 2, only where `nvidia-smi -L` lists two GPUs: train_processes: 2 (torchrun, DDP),
#        the data and training rules only (train_processes changes nothing else).
# Peak GPU memory per reconstruction: results/tables/compute_random_af8.md; per-rule wall time and RSS:
# results/benchmarks/*.tsv.
#
# Expected time on one H100-class GPU (by design < 5 min per run; inputs generated once, ~2-3 min on 16 cores,
# not counted). The work is small for the GPU: training is 1 epoch of 26 slices (2 train volumes x 13) at the
# paper batch sizes (4 steps at bs 8, 2 at bs 16), testing 30 slices (5 brain volumes x 5 + 5 knee). FLOPs per
# 320² slice (bench/results.md P1, torch.utils.flop_counter, forward): SwinIR-paper (sketcher; SwinMR alike)
# 2.5 TFLOP, NCSN++ score evaluation 2.05, guidance step (VAE decode + backward) 1.94, SD VAE 0.42 encode / 0.97
# decode, SD U-Net + control branch at 40² latents 0.35; LDPM with 2 sampler steps (one latent DC, one guidance
# step) ~7.9 TFLOP per slice, Score-MRI at N = 2 (2 predictor + 2 corrector evaluations) ~8.2. Whole run: training
# ~0.3 PFLOP (forward + backward ~3x, 7 stages, 2-4 steps each at bs 8/16 plus validation), reconstructions
# ~1 PFLOP (30 slices x: LDPM ~7.9 TFLOP x 4 runs + diagnostics ~2 runs, Score-MRI 8.2, SwinMR 2.5, U-Net /
# VarNet < 1), i.e. ~15 s of bf16 compute at a realistic 100 TFLOP/s. The time is start-up: ~45 jobs x (Python and
# torch import ~5 s; SD-2-1-base load ~10 s in the ~12 LDPM jobs) ~ 3-4 min. On 2 CPU cores the same work runs at
# ~30-60 GFLOP/s (bench/results.md, "Paper-path rehearsal"): hours at these batch sizes and test slices, which is
# why the CPU rehearsal adds configs/rehearsal-cpu.yaml (batch 1, 3 test slices, Table II = LDPM only).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${1:-/tmp/ldpm-gpu-rehearsal}
mkdir -p "$WORK"
cd "$WORK"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi -L
if [ ! -f rehearsal/STAND-IN.json ]; then
    /usr/bin/time -f "inputs: %e s, peak RSS %M kB" python -m ldpm rehearsal-inputs --out rehearsal --profile full
fi

run() {  # run NAME SNAKEMAKE-ARGS...: one workflow run in $WORK/NAME, which reads the shared stand-ins
    local name=$1
    shift
    mkdir -p "$WORK/$name"
    ln -sfn "$WORK/rehearsal" "$WORK/$name/rehearsal"
    local t0=$SECONDS
    snakemake -s "$REPO/Snakefile" -d "$WORK/$name" --cores all \
        --configfile "$REPO/configs/paper.yaml" "$REPO/configs/rehearsal.yaml" "$@" \
        > "$WORK/$name.log" 2>&1 || { echo "$name: FAILED after $((SECONDS - t0)) s, see $WORK/$name.log"; tail -30 "$WORK/$name.log"; return 1; }
    echo "$name: $((SECONDS - t0)) s (target < 300 s)"
    tail -n +1 "$WORK/$name"/results/benchmarks/*.tsv 2>/dev/null | awk 'FNR == 1 && /==>/ {f = $2} $1 ~ /^[0-9.]+$/ {print f, "s=" $1, "max_rss_MB=" $3}'
}

run gpu1 --config device=cuda train_processes=1
[ -f "$WORK/gpu1/results/tables/compute_random_af8.md" ] && cat "$WORK/gpu1/results/tables/compute_random_af8.md"

if [ "$(nvidia-smi -L | grep -c '^GPU ')" -ge 2 ]; then
    # The training rules only: train_processes changes nothing else. Batch sizes (8, 16) divide by 2.
    run gpu2 --config device=cuda train_processes=2 --until train
else
    echo "gpu2: skipped (nvidia-smi -L lists one GPU; train_processes: 2 needs two)"
fi
