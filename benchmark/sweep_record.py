"""Prints, as JSON, what a sweep ran on: once per sweep (benchmark.sh record_sweep), not in every run's summary.json.

The sweep's settings come from benchmark.sh in SWEEP_* environment variables; the rest is read here: the package
versions, the Python, the CPU (its model name from /proc/cpuinfo, and whether it has AMX or AVX512-BF16, which decide
how fast bf16 runs), the cores, the GPU if torch sees one, and the git commit of the code.
"""

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def cpu():
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = {}
    for line in info.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name", platform.processor() or platform.machine()),
        "cores": os.cpu_count(),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
    }


def gpu():
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def commit(repo):
    try:
        result = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True)
        return result.stdout.strip() or None
    except OSError:
        return None


versions = {}
for name in ("torch", "gymnasium", "mujoco", "numpy", "tyro", "wandb"):
    try:
        versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        versions[name] = None
record = {
    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "algos": os.environ.get("SWEEP_ALGOS", "").split(),
    "env_ids": os.environ.get("SWEEP_ENVS", "").split(),
    "seeds": int(os.environ.get("SWEEP_SEEDS", "0") or 0),
    "extra_args": os.environ.get("SWEEP_EXTRA", ""),
    "args_id": os.environ.get("SWEEP_ARGS_ID"),
    "workers": os.environ.get("SWEEP_WORKERS"),
    "threads_per_run": os.environ.get("SWEEP_THREADS"),
    "slurm": os.environ.get("SWEEP_SLURM") == "1",
    "commit": commit(os.environ.get("REPO", ".")),
    "python": sys.version.split()[0],
    "versions": versions,
    "host": platform.node(),
    "cpu": cpu(),
    "gpu": gpu(),
}
print(json.dumps(record, indent=2))
