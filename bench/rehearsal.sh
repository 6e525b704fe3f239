#!/usr/bin/env bash
# The paper-path rehearsal (issue 14): configs/paper.yaml run end to end with configs/rehearsal.yaml (every paper
# value but the amounts of work: 1 epoch per stage, Score-MRI N = 2, 2 Dual-Stage Sampler steps) on the stand-in
# inputs of `ldpm rehearsal-inputs` (random weights in the real architectures, simulated fastMRI files at the real
# sizes); then the same directory again with the multicoil measurement beside the paper's (issue 21: only its
# trainings and reconstructions run), and the official-weight rows under both measurements
# (configs/rehearsal-official.yaml) in a second working directory. Nothing it computes is a result; it proves the
# paper path, and measures its time and memory, before anyone spends GPU days.
#
#   bash bench/rehearsal.sh cpu|gpu [WORKDIR] [--record]      (run from anywhere, in the ldpm environment)
#
# cpu: `--profile cpu` inputs (1 training, 1 validation, 3 test slices) and configs/rehearsal-cpu.yaml (batch 1,
#      Table II = LDPM and the two retrained ablations): the slow test suite runs this (tests/test_rehearsal.py).
# gpu: `--profile full` inputs (3 brain subjects, 9 volumes, every Table III column) at the paper's batch sizes, with
#      device=cuda (bf16 autocast is automatic on CUDA) and train_processes: 1; where `nvidia-smi -L` lists two GPUs,
#      the training rules again with train_processes: 2 (torchrun, DDP; batch sizes 8 and 16 divide by 2).
# --record writes bench/rehearsal-MODE.md (times, per-job wall time and peak RSS from Snakemake's `benchmark:`) and
#      bench/rehearsal-MODE-peaks.csv, which tests/test_rehearsal.py checks profiles/slurm's mem_mb against.
#
# Expected time of `gpu` on one H100-class GPU: under 5 min per run by design (inputs ~2-3 min on 16 cores, once,
# not counted). Training is 1 epoch of 26 slices at the paper batch sizes (4 steps at bs 8, 2 at bs 16) and testing
# 30 slices (5 brain volumes x 5 + 5 knee). FLOPs per 320² slice (bench/results.md P1, torch.utils.flop_counter,
# forward): SwinIR-paper (sketcher; SwinMR alike) 2.5 TFLOP, NCSN++ score evaluation 2.05, guidance step (VAE
# decode + backward) 1.94, SD VAE 0.42 encode / 0.97 decode, SD U-Net + control branch at 40² latents 0.35; LDPM
# with 2 sampler steps ~7.9 TFLOP per slice, Score-MRI at N = 2 ~8.2. Whole run: training ~0.3 PFLOP (forward +
# backward ~3x, 7 stages, 2-4 steps each plus validation), reconstructions ~1 PFLOP (30 slices x: LDPM 7.9 x 4 runs
# + diagnostics, Score-MRI 8.2, SwinMR 2.5, U-Net / VarNet < 1): ~15 s of bf16 compute at a realistic
# 100 TFLOP/s. The time is start-up: ~50 jobs x (Python and torch import ~5 s; SD-2-1-base and CLIP text encoder
# load ~10 s in the ~12 LDPM jobs) ~ 3-4 min. The multicoil pass: 5 trainings and ~8 reconstructions (ESPIRiT
# maps per test slice on the GPU), ~2 min more. The official rows under both measurements: ~12 jobs, ~1-2 min.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${1:?usage: bench/rehearsal.sh cpu|gpu [WORKDIR] [--record]}
WORK=${2:-/tmp/ldpm-rehearsal-$MODE}
RECORD=${3:-}
C="$REPO/configs"
case $MODE in
    cpu) PROFILE=cpu; LAYERS=("$C/paper.yaml" "$C/rehearsal.yaml" "$C/rehearsal-cpu.yaml"); DEVICE=() ;;
    gpu) PROFILE=full; LAYERS=("$C/paper.yaml" "$C/rehearsal.yaml"); DEVICE=(device=cuda train_processes=1)
         nvidia-smi -L ;;
    *) echo "bench/rehearsal.sh: error: mode '$MODE': expected cpu or gpu" >&2; exit 2 ;;
esac
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
: > "$WORK/times.tsv"

timed() {  # timed NAME COMMAND...: run, append "NAME<TAB>seconds" to times.tsv, on failure show the log's tail
    local name=$1 t0=$SECONDS
    shift
    "$@" > "$WORK/$name.log" 2>&1 || { echo "$name: FAILED after $((SECONDS - t0)) s, see $WORK/$name.log" >&2
                                       tail -30 "$WORK/$name.log" >&2; return 1; }
    printf '%s\t%s\n' "$name" "$((SECONDS - t0))" | tee -a "$WORK/times.tsv"
}

workflow() {  # workflow NAME DIR [TARGETS / SNAKEMAKE ARGS...]: a run timed as NAME in $WORK/DIR, reading the
    local name=$1 dir=$2  # shared stand-ins
    shift 2
    mkdir -p "$WORK/$dir"
    ln -sfn "$WORK/rehearsal" "$WORK/$dir/rehearsal"
    timed "$name" snakemake -s "$REPO/Snakefile" -d "$WORK/$dir" --cores all "$@"
}
with_config() {  # with_config [KEY=VALUE...]: CONFIG = one --config with the mode's device settings and these (a
    local values=("${DEVICE[@]}" "$@")  # second --config would replace the first)
    CONFIG=()
    [ ${#values[@]} -eq 0 ] || CONFIG=(--config "${values[@]}")
}

[ -f "$WORK/rehearsal/STAND-IN.json" ] || timed inputs python -m ldpm rehearsal-inputs --out "$WORK/rehearsal" \
    --profile "$PROFILE"
with_config
workflow paper paper --configfile "${LAYERS[@]}" "${CONFIG[@]}"
# the multicoil pass (issue 21): every Table I method once more on the raw coil k-space, in the same directory, so
# only the multicoil trainings and reconstructions (and the protocol gap) run
with_config "measurements=[magnitude,multicoil]"
workflow multicoil paper --configfile "${LAYERS[@]}" "${CONFIG[@]}"
workflow official official results/metrics/{unet,varnet}/seed0/{magnitude,multicoil}_equispaced_af8_volumes.csv \
    --configfile "${LAYERS[@]}" "$C/rehearsal-official.yaml" "${CONFIG[@]}"
if [ "$MODE" = gpu ] && [ "$(nvidia-smi -L | grep -c '^GPU ')" -ge 2 ]; then
    workflow train2 train2 --until train --configfile "${LAYERS[@]}" --config device=cuda train_processes=2
fi
if [ "$RECORD" = --record ]; then
    python "$REPO/bench/rehearsal_table.py" "$WORK" --mode "$MODE" --out "$REPO/bench"
fi
