"""Provenance: a JSON record for every file a stage writes, kept in its own tree, and `ldpm audit` to follow them.

Where records live (`record_path`): at `<R>/provenance/records/<the output's path relative to R>.json`, where R is
the output's nearest ancestor directory named `results` (the workflow's RESULTS): `results/recon/unet/af8.h5` →
`results/provenance/records/recon/unet/af8.h5.json`. An output with no `results` ancestor (a stage run by hand
elsewhere, the tests) takes its own directory as R: `/tmp/x/zf.h5` → `/tmp/x/provenance/records/zf.h5.json`. The
rule reads only the path (no environment variable, not the working directory), so `ldpm audit` finds the records
from anywhere. Records are written only for outputs, never as a twin beside one, never into an input directory
(raw data, weights). They are not Snakemake outputs: `snakemake --delete-all-output` leaves them (`rm -r results` or
`rm -r results/provenance/records` clears them), and a record whose output is gone audits as MISSING.

`ldpm.cli.main` calls `record_stage` once after a stage succeeds, so no stage (or rule) has to remember to:
outputs are the files the stage completed through `ldpm.io.atomic_output`, its `--out*` arguments and the
checkpoints it left in `--ckpt-dir`; inputs are every other argument (also inside JSON arguments) that names an
existing file. A record holds: git commit and dirty flag of the ldpm checkout, the config hash (Snakemake exports
LDPM_CONFIG_SHA256 to its jobs; it is not a rule param, so it never triggers reruns), package versions, the
stage's arguments (seeds included), input sha256s, device, wall time, and the output's own sha256 (with size and
mtime, so `file_sha256` of a pipeline file is read from its record instead of re-hashed; raw inputs, which have no
record, are hashed again each time).

`audit` walks the records from a table or figure back through metrics, reconstructions, weights, masks,
test.h5 and index.csv to the raw files, checking each recorded sha256 against the file on disk today.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import ldpm
from ldpm.io import atomic_output, sha256_file

RESULTS_NAME = "results"  # the workflow's RESULTS directory
RECORDS = Path("provenance") / "records"
CONFIG_HASH_ENV = "LDPM_CONFIG_SHA256"
PACKAGES = ["ldpm", "torch", "torchvision", "numpy", "scipy", "pandas", "h5py", "fastmri", "diffusers",
            "safetensors", "scikit-image", "lpips", "torch-fidelity", "snakemake"]


# Files a stage reads that are not on its command line (e.g. backbone weights found in a weights directory).
EXTRA_INPUTS: list[Path] = []


def export_config_hash(config: dict) -> str:
    """Put the sha256 of the validated config in this process's environment, where every `ldpm` stage started from
    it (Snakemake's jobs) finds it for its records; not a rule param, so it never triggers a rerun by itself."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    os.environ[CONFIG_HASH_ENV] = digest
    return digest


def note_input(path: str | Path) -> None:
    EXTRA_INPUTS.append(Path(path))


def record_path(path: str | Path) -> Path:
    """Where the provenance record of `path` lives (see the module docstring); never beside `path` itself."""
    path = Path(os.path.abspath(path))  # absolute, `..` folded, symlinks kept (results/ may be a link)
    root = next((d for d in path.parents if d.name == RESULTS_NAME), path.parent)
    return root / RECORDS / f"{path.relative_to(root)}.json"


def read_record(path: str | Path) -> dict | None:
    try:
        return json.loads(record_path(path).read_text())
    except (OSError, ValueError):  # absent, unreadable, or not JSON (JSONDecodeError is a ValueError)
        return None


def file_sha256(path: str | Path) -> str:
    """sha256 of a file; taken from its record while size and mtime still match, so big inputs are hashed once."""
    path = Path(path)
    stat = path.stat()
    rec = read_record(path)
    if rec and rec.get("size") == stat.st_size and rec.get("mtime_ns") == stat.st_mtime_ns and rec.get("sha256"):
        return rec["sha256"]
    return sha256_file(path)


def _git(repo: Path, *args: str) -> str | None:
    # --no-optional-locks: never take index.lock, other people commit in this checkout while stages run.
    try:
        res = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.decode(errors="replace") if res.returncode == 0 else None


def git_state() -> dict:
    """Commit of the checkout ldpm runs from, whether it differs from it, and a hash of that difference."""
    repo = Path(ldpm.__file__).resolve().parents[2]
    head = _git(repo, "rev-parse", "HEAD") if (repo / ".git").exists() else None
    if head is None:
        return {"repo": str(repo), "commit": None, "dirty": None, "diff_sha256": None}
    status = _git(repo, "status", "--porcelain") or ""
    diff = _git(repo, "diff", "HEAD") or ""
    return {"repo": str(repo), "commit": head.strip(), "dirty": bool(status.strip()),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if status.strip() else None}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info(requested: str | None) -> dict:
    info = {"requested": requested, "host": platform.node(), "cpu_count": os.cpu_count()}
    torch = sys.modules.get("torch")  # a stage that never imported torch used no accelerator
    if torch is not None:
        info["torch"] = torch.__version__  # with the local build tag (+cu130), which package metadata omits
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
        info["torch_threads"] = torch.get_num_threads()
    return info


def _paths_in(value) -> list[str]:
    """Strings inside an argument value (plain, list or JSON dict) that could name files."""
    if isinstance(value, (str, Path)):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _paths_in(v)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    return []


def _exists(path: Path) -> bool:
    try:  # argument strings that are not paths (long JSON, odd characters) may not even be valid names
        return path.exists()
    except (OSError, ValueError):
        return False


def stage_files(args: argparse.Namespace, written: list[Path], started: float) -> tuple[list[Path], list[Path]]:
    """(outputs, inputs) of a finished stage, from the files it wrote and its command-line arguments."""
    outputs = [p for p in written if p.exists()]
    outputs += [Path(p) for k, v in vars(args).items() if k.startswith("out") for p in _paths_in(v)
                if Path(p).is_file()]
    ckpt_dir = getattr(args, "ckpt_dir", None)
    if ckpt_dir and Path(ckpt_dir).is_dir():  # resumable checkpoints this run wrote
        outputs += [p for p in sorted(Path(ckpt_dir).iterdir())
                    if p.is_file() and p.stat().st_mtime >= started]
    # `--out DIR` (the embedded raw data) gets one record for the directory, not one per file inside it;
    # `--out-dir` is only where a stage puts its files, each recorded on its own.
    out = getattr(args, "out", None)
    if isinstance(out, str) and Path(out).is_dir():
        outputs = [o for o in outputs if Path(out) not in o.parents] + [Path(out)]
    outputs = list(dict.fromkeys(outputs))
    resolved = {o.resolve() for o in outputs}
    inputs = []
    for key, value in vars(args).items():
        if key.startswith("out") or key in {"func", "command", "ckpt_dir"}:
            continue
        for text in _paths_in(value):
            p = Path(text)
            if _exists(p) and p.resolve() not in resolved and p not in inputs:
                inputs.append(p)
    inputs += [p for p in EXTRA_INPUTS if p.exists() and p not in inputs]
    return outputs, inputs


def input_record(path: Path) -> dict:
    if path.is_dir():
        return {"path": str(path), "kind": "directory"}
    return {"path": str(path), "kind": "file", "sha256": file_sha256(path)}


def _jsonable(args: argparse.Namespace) -> dict:
    return json.loads(json.dumps({k: v for k, v in vars(args).items() if k != "func"}, default=str))


def record_stage(args: argparse.Namespace, argv: list[str], written: list[Path], started: float,
                 finished: float) -> list[Path]:
    """Write the record (`record_path`) of every output of the stage that just finished; return their paths."""
    outputs, inputs = stage_files(args, written, started)
    if not outputs:
        return []
    base = {
        "stage": args.command,
        "argv": ["ldpm", *argv],
        "args": _jsonable(args),
        "cwd": os.getcwd(),
        "seed": getattr(args, "seed", None),
        "config_sha256": os.environ.get(CONFIG_HASH_ENV),
        "code_version": os.environ.get("LDPM_CODE"),  # the stage's code version (ldpm.code_version), set by its rule
        "git": git_state(),
        "versions": versions(),
        "device": device_info(getattr(args, "device", None)),
        "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(finished - started, 3),
        "inputs": [input_record(p) for p in inputs],
    }
    records = []
    for out in outputs:
        if out.is_dir():
            record = {"output": str(out), "kind": "directory",
                      "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())}
        else:
            stat = out.stat()
            record = {"output": str(out), "kind": "file", "sha256": sha256_file(out), "size": stat.st_size,
                      "mtime_ns": stat.st_mtime_ns}
        with atomic_output(record_path(out)) as tmp:
            tmp.write_text(json.dumps(record | base, indent=1) + "\n")
        records.append(record_path(out))
    return records


# --------------------------------------------------------------------------------------------------------- audit

def _resolve(path: str, record: dict | None) -> Path:
    """Recorded paths are relative to the stage's working directory; fall back to today's."""
    p = Path(path)
    if not p.is_absolute() and record and not p.exists():
        candidate = Path(record.get("cwd", ".")) / p
        if candidate.exists():
            return candidate
    return p


class Auditor:
    def __init__(self, method: str | None = None, max_raw: int = 20, verify_raw: bool = False):
        self.method, self.max_raw, self.verify_raw = method, max_raw, verify_raw
        self.lines: list[str] = []
        self.seen: set[Path] = set()
        self._sha: dict[Path, str] = {}

    def sha(self, path: Path) -> str:
        key = path.resolve()
        if key not in self._sha:
            self._sha[key] = file_sha256(path)
        return self._sha[key]

    @staticmethod
    def describe(rec: dict) -> str:
        git = rec.get("git", {})
        commit = (git.get("commit") or "no-git")[:10] + ("+dirty" if git.get("dirty") else "")
        cfg = (rec.get("config_sha256") or "-")[:10]
        dev = rec.get("device", {})
        device = "cuda" if dev.get("cuda") else "cpu" if "cuda" in dev else "-"
        seed = "-" if rec.get("seed") is None else rec["seed"]
        return (f"ldpm {rec.get('stage')} · commit {commit} · config {cfg} · seed {seed} · "
                f"{device} · {rec.get('wall_seconds', 0):.1f} s · {rec.get('started', '')}")

    def status(self, path: Path, expected: str | None) -> str:
        if not path.exists():
            return "MISSING"
        if path.is_dir():
            return "dir"
        current = self.sha(path)
        if expected is None:
            return f"sha256 {current[:12]}"
        return f"sha256 {current[:12]} ok" if current == expected else \
            f"CHANGED (recorded {expected[:12]}, now {current[:12]})"

    def node(self, path: Path, expected: str | None, prefix: str, last: bool, root: bool = False) -> None:
        branch = "" if root else ("└── " if last else "├── ")
        rec = read_record(path)
        if expected is None and rec:
            expected = rec.get("sha256")
        line = f"{prefix}{branch}{path}  [{self.status(path, expected)}]"
        key = path.resolve()
        if key in self.seen:
            self.lines.append(line + "  (see above)")
            return
        self.seen.add(key)
        if rec is None:
            self.lines.append(line + "  (no provenance record: a raw or external file)")
            return
        self.lines.append(f"{line}  ← {self.describe(rec)}")
        child_prefix = prefix + ("" if root else ("    " if last else "│   "))
        if rec.get("stage") == "index":
            self.raw_files(path, child_prefix)
        inputs = [i for i in rec.get("inputs", []) if self.keep(i, rec, root)]
        for n, item in enumerate(inputs):
            child = _resolve(item["path"], rec)
            self.node(child, item.get("sha256"), child_prefix, n == len(inputs) - 1)

    def keep(self, item: dict, rec: dict, root: bool) -> bool:
        if item.get("kind") == "directory":
            return rec.get("stage") != "index"  # index.csv's raw directories are listed file by file instead
        if root and self.method:  # --method narrows a table to one row: inputs of that method or of all
            child = read_record(_resolve(item["path"], rec)) or {}
            return child.get("args", {}).get("method") in (None, self.method)
        return True

    def raw_files(self, index_csv: Path, prefix: str) -> None:
        """The raw volumes index.csv lists with their sha256 (checked against the files when --verify-raw)."""
        import pandas as pd

        index = pd.read_csv(index_csv)
        shown = index if self.max_raw <= 0 else index.head(self.max_raw)
        self.lines.append(f"{prefix}├── raw: {len(index)} volumes, sha256 of each recorded in {index_csv.name}")
        for row in shown.itertuples():
            p = Path(row.path)
            if not p.exists():
                state = "MISSING"
            elif self.verify_raw:
                state = "ok" if sha256_file(p) == row.sha256 else "CHANGED"
            else:
                state = "present"
            self.lines.append(f"{prefix}│   {p}  sha256 {row.sha256[:12]}  [{state}]")
        if len(shown) < len(index):
            self.lines.append(f"{prefix}│   … {len(index) - len(shown)} more (--max-raw 0 lists all)")
        # Generated raw data (the embedded source) has a record on its directory.
        generators = {d for p in index["path"] for d in Path(p).parents if record_path(d).exists()}
        for n, d in enumerate(sorted(generators)):
            self.node(d, None, prefix, n == len(generators) - 1)


def audit(paths: str | Path | list[str | Path], method: str | None = None, max_raw: int = 20,
          verify_raw: bool = False) -> list[str]:
    """Lines of the provenance trees of `paths` (tables, figures, reconstructions, weights …); a file already
    shown in an earlier tree is not expanded again."""
    from ldpm import LdpmError

    paths = [paths] if isinstance(paths, (str, Path)) else paths
    auditor = Auditor(method, max_raw, verify_raw)
    for n, path in enumerate(map(Path, paths)):
        if not path.exists():
            raise LdpmError(f"{path}: file not found; give a table, figure or other pipeline output")
        if read_record(path) is None:
            raise LdpmError(f"{path}: no provenance record ({record_path(path)}); rerun the rule that writes it")
        if n:
            auditor.lines.append("")
        auditor.node(path, None, "", True, root=True)
    return auditor.lines
