"""The workflow's wildcards and rerun promises, checked on dry runs (no job runs here)."""

from __future__ import annotations

import yaml
from conftest import multicoil_config
from test_pipeline import small_config, snakemake


def plan(tmp_path, cfg: dict, *args: str):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    planned = snakemake(tmp_path, "-n", "-p", *args)
    assert planned.returncode == 0, planned.stderr[-2000:]
    return planned.stdout


def test_mask_type_is_a_wildcard_beside_af(tmp_path):
    """masks.types [random, equispaced]: every test-set file exists once per (type, AF); models are trained once."""
    cfg = small_config() | {"methods": ["zero_filled", "unet"]}
    cfg["masks"]["types"] = ["random", "equispaced"]
    out = plan(tmp_path, cfg)
    for mask in ("random", "equispaced"):
        for path in (f"results/masks/{mask}_af8.npz", f"results/masks/{mask}_af8.csv",
                     f"results/recon/unet/seed0/magnitude_{mask}_af8.h5", f"results/tables/table1_magnitude_{mask}_af8.csv"):
            assert path in out, path
        assert f"--mask-type {mask} --acceleration 8" in out
    assert out.count("ldpm train unet") == 1


def test_training_seeds_are_a_wildcard_and_the_tables_read_every_seed(tmp_path):
    """training_seeds [0, 3]: each trained model and each reconstruction runs per seed, Table I and the statistics
    read both seeds' metrics, Fig 2 the first seed's reconstructions; data and masks are made once."""
    cfg = small_config() | {"methods": ["zero_filled", "unet"], "training_seeds": [0, 3]}
    out = plan(tmp_path, cfg)
    for seed in (0, 3):
        assert f"results/models/seed{seed}/unet.safetensors" in out
        assert f"--seed {seed} --device" in out
        assert f"results/recon/unet/seed{seed}/magnitude_random_af8.h5" in out
    tables = next(line for line in out.splitlines() if "ldpm tables " in line)
    stats = next(line for line in out.splitlines() if "ldpm stats " in line)
    for seed in (0, 3):
        assert f"results/metrics/unet/seed{seed}/magnitude_random_af8_volumes.csv" in tables
        assert f"results/metrics/unet/seed{seed}/magnitude_random_af8_volumes.csv" in stats
    figure2 = next(line for line in out.splitlines() if "ldpm figure2 " in line)
    assert "seed0" in figure2 and "seed3" not in figure2
    assert out.count("ldpm masks ") == 1 and out.count("ldpm train unet") == 2


def test_ablations_sample_with_the_full_models_tuned_settings(tmp_path):
    """Table II's rows inherit LDPM's validation-tuned sampler settings (its caption says so): every LDPM-family
    reconstruction reads the one tuning file of its protocol, and no ablation is tuned on its own."""
    out = plan(tmp_path, small_config())
    tuned = "results/ldpm/seed0/sampler_magnitude_random_af8.json"
    for method in ("ldpm", "ldpm_no_mrvae", "ldpm_no_skm", "ldpm_no_dss"):
        line = next(line for line in out.splitlines() if f"ldpm reconstruct {method} " in line)
        assert tuned in line, method
    assert out.count("ldpm tune-sampler ") == 1


# ---------------------------------------------------------------- what a change reruns, on a finished run

def planned_jobs(workdir, *args, env=None) -> set[str]:
    """The rules of the jobs `snakemake -n` would run (its "Job stats" table), `all` left out."""
    result = snakemake(workdir, "-n", *args, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return set()
    table = text.split("Job stats:")[1].strip().split("\n\n")[0]  # job / count / ---- / one row per rule / total
    rows = [line.split() for line in table.splitlines()[2:]]
    return {row[0] for row in rows if len(row) == 2 and row[1].isdigit()} - {"all", "total"}


def test_a_changed_statistics_setting_reruns_only_the_statistics(finished_run):
    assert planned_jobs(finished_run, "--config", 'evaluation={"bootstrap_samples": 500}') == \
        {"stats", "forest_plot", "audit", "html_report"}
    assert planned_jobs(finished_run, "--config", 'evaluation={"figure_examples": 1}') == \
        {"figure2", "audit", "html_report"}


def test_the_data_seed_and_a_centre_fraction_rerun_what_depends_on_them(finished_run):
    every = planned_jobs(finished_run, "--config", "seed=1")  # splits, masks, statistics: everything downstream
    assert {"embedded_data", "train", "reconstruct", "metrics", "tables", "stats", "html_report"} <= every
    changed = planned_jobs(finished_run, "--config", 'masks={"center_fractions": {"8": 0.05}}')
    assert {"masks", "reconstruct", "metrics", "tables", "stats", "figure2"} <= changed
    assert not changed & {"train", "embedded_data", "gather", "training_curve"}


def test_params_are_canonical_reordered_keys_and_spelled_out_defaults_rerun_nothing(finished_run, tmp_path):
    from ldpm.config import validate_config

    def reordered(value, key=None):
        """Every mapping's keys in reverse order, except test_splits, whose order is Table III's column order."""
        if not isinstance(value, dict):
            return value
        items = list(value.items()) if key == "test_splits" else list(value.items())[::-1]
        return {k: reordered(v, k) for k, v in items}

    spelled_out = validate_config(yaml.safe_load((finished_run / "config.yaml").read_text()))
    config = tmp_path / "reordered.yaml"
    config.write_text(yaml.safe_dump(reordered(spelled_out), sort_keys=False))  # every default written out
    # only the report, which names the config file(s) the run read
    assert planned_jobs(finished_run, "--configfile", str(config)) == {"html_report"}
    swapped = reordered(spelled_out)
    swapped["test_splits"] = dict(reversed(swapped["test_splits"].items()))  # Table III's columns: a real change
    config.write_text(yaml.safe_dump(swapped, sort_keys=False))
    assert {"tables"} <= planned_jobs(finished_run, "--configfile", str(config))


def planned_outputs(workdir, *args, env=None, cwd=None) -> set[str]:
    """The output files of the jobs `snakemake -n` would run: what a change reruns, per output path (two jobs of
    one rule, e.g. U-Net's and LDPM's reconstructions, told apart)."""
    result = snakemake(workdir, "-n", *args, env=env, cwd=cwd, cores=None if "--cores" in args else 2)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return {path for line in result.stdout.splitlines() if line.strip().startswith("output: ")
            for path in line.split("output: ", 1)[1].split(", ")}


def edited_src(tmp_path, module: str):
    """A copy of src/ where `module` (a path below src/ldpm) has one more line: PYTHONPATH for the Snakefile."""
    import shutil

    from conftest import REPO

    src = tmp_path / module.replace("/", "_")
    shutil.copytree(REPO / "src", src)
    path = src / "ldpm" / module
    path.write_text(path.read_text() + "\n# an edit\n")
    return {"PYTHONPATH": str(src)}


TRAINED_ELSEWHERE = ("unet", "varnet", "swinmr", "score_mri")


def test_a_code_change_reruns_the_jobs_that_run_that_code_and_no_other(finished_run, tmp_path):
    """The code version is per job: an edit to the Dual-Stage Sampler reruns the LDPM-family reconstructions, the
    tuning and the diagnostics, and no training and no other method's job; an edit to Score-MRI reruns its training
    and reconstruction and what reads them, and no LDPM or other baseline job."""
    planned = planned_outputs(finished_run, env=edited_src(tmp_path, "sampling/dual_stage.py"))
    for method in ("ldpm", "ldpm_no_mrvae", "ldpm_no_skm", "ldpm_no_dss", "ldpm_final_dc", "ldpm_mean_k"):
        assert f"results/recon/{method}/seed0/magnitude_random_af8.h5" in planned, method
    assert {"results/ldpm/seed0/sampler_magnitude_random_af8.json", "results/tables/ldpm_diagnostics_random_af8.csv",
            "results/tables/table1_magnitude_random_af8.csv"} <= planned
    for method in ("zero_filled", *TRAINED_ELSEWHERE):
        assert f"results/recon/{method}/seed0/magnitude_random_af8.h5" not in planned, method
        assert f"results/metrics/{method}/seed0/magnitude_random_af8_volumes.csv" not in planned, method
    assert not [p for p in planned if p.startswith(("results/models/", "results/figures/training/", "results/data/"))]

    planned = planned_outputs(finished_run, env=edited_src(tmp_path, "baselines/score_mri.py"))
    assert {"results/models/seed0/score_mri.safetensors", "results/recon/score_mri/seed0/magnitude_random_af8.h5",
            "results/metrics/score_mri/seed0/magnitude_random_af8_volumes.csv", "results/tables/table1_magnitude_random_af8.csv"} <= planned
    others = [p for p in planned if "score_mri" not in p and p.startswith(
        ("results/models/", "results/recon/", "results/metrics/", "results/ldpm/", "results/figures/training/"))]
    assert others == ["results/metrics/perceptual/seed0/magnitude_random_af8.csv"]  # LPIPS/rFID over every method
    assert not [p for p in planned if "ldpm" in p or "table2" in p or "fig3" in p]

    # shared code still counts for every job: ldpm.reconstruct reruns every method's sampling, no training
    planned = planned_outputs(finished_run, env=edited_src(tmp_path, "reconstruct.py"))
    for method in ("zero_filled", "ldpm", *TRAINED_ELSEWHERE):
        assert f"results/recon/{method}/seed0/magnitude_random_af8.h5" in planned, method
    assert not [p for p in planned if p.startswith("results/models/")]


def test_a_test_folder_added_with_the_readme_recipe_retrains_nothing(finished_run, tmp_path, raw_dir):
    """README's recipe for your own folder, run as written (its mine.yaml, its command line, dry): it works, and on a
    finished run it indexes and preprocesses only the new folder and rewrites only test.h5. train.h5 and val.h5 are
    not rewritten, so no model is retrained and neither the training curves nor the sampler tuning rerun; the
    embedded data's shards (whose params hold only their own dataset's settings) are not reprocessed either."""
    import re
    import shlex
    import shutil
    import textwrap

    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    recipe = re.search(r"```yaml\n(\s*# mine\.yaml\n.*?)```", readme, re.S)
    command = re.search(r"```bash\n\s*(snakemake [^\n]*--configfile config\.yaml mine\.yaml[^\n]*)\n", readme)
    assert recipe and command, "README: the mine.yaml block and its command line"
    mine = tmp_path / "h5s"
    mine.mkdir()
    for src in sorted((raw_dir / "ood").glob("*.h5"))[:1]:
        shutil.copy(src, mine / f"mine_{src.name}")
    (finished_run / "mine.yaml").write_text(textwrap.dedent(recipe.group(1)).replace("/path/to/h5s", str(mine)))
    try:
        argv = shlex.split(command.group(1))
        planned = planned_outputs(finished_run, *argv[1:], cwd=finished_run)
    finally:
        (finished_run / "mine.yaml").unlink()
    assert {"results/data/index/mine.csv", "results/data/test.h5", "results/recon/unet/seed0/magnitude_random_af8.h5",
            "results/tables/table3_magnitude_random_af8.csv"} <= planned
    assert not {"results/data/train.h5", "results/data/val.h5", "results/data/index/brain.csv"} & planned
    assert not [p for p in planned if p.startswith(("results/models/", "results/figures/training/", "results/ldpm/",
                                                    "results/data/shards/"))]


def test_a_datasets_own_setting_reprocesses_only_its_shards(finished_run, tmp_path):
    """data.datasets.ood.drop_last_slices lowered below data.drop_last_slices: the ood shards are reprocessed with it
    (their params hold only ood's settings) and test.h5 is rewritten; no brain shard, no train / val file, no
    model."""
    cfg = yaml.safe_load((finished_run / "config.yaml").read_text())
    lowered = cfg["data"]["datasets"]["ood"]["drop_last_slices"] = cfg["data"]["drop_last_slices"] - 1
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = snakemake(finished_run, "-n", "-p", "--configfile", str(config))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    planned = {p for line in result.stdout.splitlines() if line.strip().startswith("output: ")
               for p in line.split("output: ", 1)[1].split(", ")}
    shards = [p for p in planned if p.startswith("results/data/shards/")]
    assert shards and all(p.startswith("results/data/shards/ood/") for p in shards)
    assert "results/data/test.h5" in planned
    assert not {"results/data/train.h5", "results/data/val.h5"} & planned
    assert not [p for p in planned if p.startswith(("results/models/", "results/data/index/"))]
    shard_commands = [line for line in result.stdout.splitlines() if " preprocess-shard " in line]
    assert shard_commands and all(f'"dataset_drop": {{"ood": {lowered}}}' in c and "brain" not in c
                                  for c in shard_commands)


def test_a_table3_column_over_several_datasets(tmp_path):
    """A test split whose filter is a list (one column over several datasets) plans like any other column; it is
    an other-anatomy column of the report only when every dataset it selects is ood."""
    cfg = small_config()
    cfg["test_splits"] |= {"both": {"dataset": ["brain", "ood"]}, "ood_list": {"dataset": ["ood"]}}
    out = plan(tmp_path, cfg)
    report = next(line for line in out.splitlines() if " ldpm report " in line)
    assert "--ood-splits '[\"OOD\", \"ood_list\"]'" in report
    tables = next(line for line in out.splitlines() if " ldpm tables " in line)
    assert '["both", {"dataset": ["brain", "ood"]}]' in tables


# ---------------------------------------------------------------- conventions: lint, software environment

def paper_config_with_stand_in_paths(tmp_path) -> dict:
    """configs/paper.yaml with its PATH folders pointed at empty stand-ins (the workflow only checks they exist)."""
    from conftest import REPO

    cfg = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
    for name, spec in cfg["data"]["datasets"].items():
        (tmp_path / name).mkdir()
        spec["paths"] = [str(tmp_path / name)]
    (tmp_path / "sd").mkdir()
    cfg["ldpm"]["sd_dir"] = str(tmp_path / "sd")
    return cfg


def test_snakemake_lint_is_clean_on_the_default_and_the_paper_config(tmp_path):
    for name, cfg in [("default", small_config()), ("paper", paper_config_with_stand_in_paths(tmp_path))]:
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        result = snakemake(workdir, "--lint", "--configfile", str(workdir / "config.yaml"))
        assert result.returncode == 0, (name, (result.stdout + result.stderr)[-3000:])
        assert "Lints for" not in result.stdout + result.stderr, name


def test_the_conda_environment_pins_the_lock_and_every_rule_uses_it():
    """No conda on CI: the env file is checked as data (YAML, the same pins as envs/constraints.txt, no relative
    path that breaks when Snakemake copies it) and every rule's `conda:` directive is checked by the lint above."""
    from conftest import REPO

    env = yaml.safe_load((REPO / "envs/ldpm.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    lock = {line.strip() for line in (REPO / "envs/constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    assert set(pip) == lock and len(pip) == len(lock)
    assert not [p for p in pip if p.startswith("-") or "/" in p or ".." in p]
    assert "python=3.11" in env["dependencies"]


def test_files_reached_through_config_paths_are_declared_inputs(tmp_path):
    """The paper config's SD-2-1-base folder and VGG weights are read through hp paths: every file is an input of
    the stages that read it (replacing one reruns them), and of no other stage."""
    cfg = paper_config_with_stand_in_paths(tmp_path)
    for name in ("vae/config.json", "vae/diffusion_pytorch_model.safetensors", "unet/config.json"):
        (tmp_path / "sd" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sd" / name).write_text("{}")
    (tmp_path / "vgg16.pth").write_text("x")
    (tmp_path / "vgg19.pth").write_text("x")
    cfg["ldpm"]["vgg_weights"] = str(tmp_path / "vgg16.pth")
    cfg["swinmr"]["vgg_weights"] = str(tmp_path / "vgg19.pth")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = snakemake(workdir, "-n", "--configfile", str(workdir / "config.yaml"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    inputs = {}  # (rule, model or method) -> its input line
    for block in result.stdout.split("\nrule ")[1:]:
        wildcards = block.split("wildcards: ")[1].split("\n")[0] if "wildcards: " in block else ""
        inputs[(block.split(":")[0], wildcards)] = block.split("input: ")[1].split("\n")[0] if "input: " in block else ""
    mrvae = next(v for (r, w), v in inputs.items() if r == "train" and "model=ldpm_mrvae" in w)
    swinmr = next(v for (r, w), v in inputs.items() if r == "train" and "model=swinmr" in w)
    unet = next(v for (r, w), v in inputs.items() if r == "train" and "model=unet" in w)
    assert str(tmp_path / "sd/vae/config.json") in mrvae and str(tmp_path / "vgg16.pth") in mrvae
    assert str(tmp_path / "vgg19.pth") in swinmr and str(tmp_path / "sd") not in swinmr
    assert str(tmp_path / "sd") not in unet and "vgg" not in unet


def jobs_by_output(out: str) -> dict[str, str]:
    """{output path: the shell command of the job that writes it} of a `snakemake -n -p` plan."""
    jobs, outputs = {}, []
    for line in out.splitlines():
        if line.strip().startswith("output: "):
            outputs = line.split("output: ", 1)[1].split(", ")
        elif outputs and line.strip() and not line.startswith(" ") and "python -m ldpm" in line:
            jobs |= {path: line for path in outputs}
            outputs = []
    return jobs


def test_measurement_is_a_wildcard_and_leaves_the_magnitude_jobs_as_they_are(tmp_path):
    """measurements [magnitude, multicoil]: every method gets a reconstruction, metrics and tables under both; the
    models trained on a measurement's inputs are trained once per measurement (the fully-sampled priors once); the
    multicoil jobs read the raw files through the index; and every magnitude job is planned with exactly the command
    a magnitude-only run plans for the same output path, so its outputs are the same bytes."""
    base = multicoil_config(small_config()) | {"measurements": ["magnitude"]}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    alone = jobs_by_output(plan(tmp_path / "a", base))
    both = jobs_by_output(plan(tmp_path / "b", base | {"measurements": ["magnitude", "multicoil"]}))
    for method in base["methods"]:
        for measurement in ("magnitude", "multicoil"):
            assert f"results/recon/{method}/seed0/{measurement}_random_af8.h5" in both, (method, measurement)
            assert f"results/metrics/{method}/seed0/{measurement}_random_af8_volumes.csv" in both
    assert {"results/tables/table1_multicoil_random_af8.csv", "results/tables/protocol_gap_random_af8.csv",
            "results/figures/protocol_gap_random_af8.png"} <= set(both)
    trained = {p.split("/")[-1].removesuffix(".safetensors") for p in both if p.endswith(".safetensors")}
    for model in ("unet", "varnet", "swinmr", "ldpm_sketcher", "ldpm_mrcn"):
        assert {model, f"{model}_multicoil"} <= trained, model
    assert not {"score_mri_multicoil", "ldpm_mrvae_multicoil", "ldpm_mrcn_no_skm_multicoil"} & trained
    assert '"measurement"' not in both["results/models/seed0/unet.safetensors"]  # the paper's simulation
    assert '"measurement": "multicoil"' in both["results/models/seed0/unet_multicoil.safetensors"]
    recon = both["results/recon/ldpm/seed0/multicoil_random_af8.h5"]
    assert "--measurement multicoil --index results/data/index/brain.csv results/data/index/ood.csv" in recon
    assert "ldpm_sketcher_multicoil.safetensors" in recon and "ldpm_mrcn_multicoil.safetensors" in recon
    assert "sampler_multicoil_random_af8.json" in recon
    assert "unet_multicoil.safetensors" in both["results/recon/unet/seed0/multicoil_random_af8.h5"]
    assert "score_mri.safetensors" in both["results/recon/score_mri/seed0/multicoil_random_af8.h5"]
    shared = [p for p in alone if "multicoil" not in p and "report.html" not in p]
    assert len(shared) > 40
    for path in shared:
        assert both[path] == alone[path], path
