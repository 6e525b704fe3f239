#!/usr/bin/env bash
# LDPM across training seeds (issue 11's robustness target): for each seed, a clean working directory runs the
# embedded default up to Table II, the LDPM diagnostics and the zero-filled / LDPM metrics (baselines are not
# retrained: their rows do not change what is checked here), then prints the rows side by side.
# Usage: bash bench/ldpm_seeds.sh [SEED ...]   (default: 0 1 2; about 8 min per seed on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=("${@:-0 1 2}")
[ $# -eq 0 ] && seeds=(0 1 2)
for seed in "${seeds[@]}"; do
  dir="bench/seeds/seed$seed"
  mkdir -p "$dir"
  start=$(date +%s)
  snakemake -s Snakefile -d "$dir" --configfile config.yaml --config seed="$seed" "training_seeds=[$seed]" --cores all \
    results/tables/table2_random_af8.csv results/tables/ldpm_diagnostics_random_af8.csv \
    results/metrics/zero_filled/seed$seed/magnitude_random_af8_volumes.csv results/metrics/ldpm_final_dc/seed$seed/magnitude_random_af8_volumes.csv \
    results/metrics/ldpm_mean_k/seed$seed/magnitude_random_af8_volumes.csv > "$dir/snakemake.log" 2>&1
  echo "seed $seed: $(( $(date +%s) - start )) s"
done
python - "${seeds[@]}" <<'PY'
import sys
import pandas as pd
rows = []
for seed in sys.argv[1:]:
    d = f"bench/seeds/seed{seed}/results"
    diag = pd.read_csv(f"{d}/tables/ldpm_diagnostics_random_af8.csv", index_col=0)
    t2 = pd.read_csv(f"{d}/tables/table2_random_af8.csv", index_col=0)
    res = {m: pd.read_csv(f"{d}/metrics/{m}/seed{seed}/magnitude_random_af8_volumes.csv").query("dataset == 'brain'")
           for m in ("zero_filled", "ldpm", "ldpm_final_dc", "ldpm_mean_k")}
    for name, row in diag.iterrows():
        rows.append({"seed": seed, "row": name, "PSNR": row["all PSNR"], "SSIM": row["all SSIM"],
                     "delta": row["all δ"]})
    for name, row in t2.iterrows():
        rows.append({"seed": seed, "row": f"Table II: {name}", "PSNR": row["PSNR"], "SSIM": row["SSIM"]})
    for m, frame in res.items():
        rows.append({"seed": seed, "row": f"k-space residual: {m}", "PSNR": frame.psnr.mean(),
                     "SSIM": frame.ssim.mean(), "delta": frame.kspace_residual.mean()})
table = pd.DataFrame(rows).pivot_table(index="row", columns="seed", values=["PSNR", "SSIM", "delta"], sort=False)
print(table.round(4).to_markdown())
PY
