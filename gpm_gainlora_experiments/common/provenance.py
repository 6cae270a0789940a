"""Where a result came from: package versions, git commit, and peak memory of the process."""

from __future__ import annotations

import functools
import hashlib
import platform
import resource
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_PACKAGES = ("torch", "avalanche-lib", "avalanche-gpm-gainlora")
_CODE_DIRS = ("avalanche_gpm", "gpm_gainlora_experiments")


def package_versions(extra: Sequence[str] = ()) -> dict[str, str | None]:
    """Installed versions of torch, Avalanche and this project (None when not installed).

    :param extra: further distribution names to report, e.g. ``("transformers", "peft")``.
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in (*_PACKAGES, *extra):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


#: The vector extensions whose kernels change float rounding (and speed) of the same code.
_VECTOR_FLAGS = ("avx2", "avx512f", "amx_bf16")


@functools.cache
def cpu_model() -> str:
    """The CPU's model name and vector extensions, e.g. ``"Intel(R) Xeon(R) Processor (avx2, avx512f)"``.

    Float results of the same code and seed differ between CPUs (AVX2 against AVX-512/AMX kernels
    round differently), so records name the one they ran on. Read from ``/proc/cpuinfo`` on Linux,
    where ``platform.processor()`` is empty.
    """
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    present = [flag for flag in _VECTOR_FLAGS if flag in flags]
    return f"{name} ({', '.join(present)})" if present else name


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def git_commit(code_dirs: Sequence[str] = _CODE_DIRS) -> str | None:
    """The project's ``HEAD`` commit, with ``+dirty`` when tracked code differs from it; None
    when the code does not run from a git checkout of this project (an installed copy, even one
    inside some other repository, or no git).

    :param code_dirs: folders (relative to the project root) whose tracked changes mark the
        commit dirty.
    """
    # An installed copy lives in site-packages; a virtual environment inside the *user's*
    # repository would otherwise give that repository's HEAD.
    toplevel = _git("rev-parse", "--show-toplevel")
    if toplevel is None or Path(toplevel).resolve() != PROJECT_ROOT or not (PROJECT_ROOT / "pyproject.toml").is_file():
        return None
    head = _git("rev-parse", "HEAD")
    if not head:
        return None
    changes = _git("status", "--porcelain", "--untracked-files=no", "--", *code_dirs)
    return f"{head}+dirty" if changes else head


@functools.cache
def process_commit(code_dirs: Sequence[str] = _CODE_DIRS) -> str | None:
    """:func:`git_commit` read once per process, at the first call (after the code was imported).

    A sweep runs many records in one process; reading the checkout again before each would name
    commits made while the sweep ran, not the code it runs.
    """
    return git_commit(tuple(code_dirs))


@functools.cache
def source_fingerprint(code_dirs: Sequence[str] = _CODE_DIRS) -> str:
    """SHA-256 of the Python sources of ``code_dirs`` as imported (paths and contents): names the
    code a record came from whether or not it runs from a git checkout.

    Read once per process, like :func:`process_commit`.
    """
    digest = hashlib.sha256()
    for folder in code_dirs:
        root = PROJECT_ROOT / folder
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(PROJECT_ROOT).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def record_provenance(
    device: torch.device, commit: str | None, source: str, extra_packages: Sequence[str] = ()
) -> dict[str, Any]:
    """The fields every run record ends with: peak memory, the environment (device, package
    versions, the code's commit and fingerprint) and the finishing time.

    :param commit: :func:`process_commit` read when the run started.
    :param source: :func:`source_fingerprint` read when the run started.
    :param extra_packages: further distributions to report (see :func:`package_versions`).
    """
    return {
        "peak_memory": {"max_rss_mib": max_rss_mib(), "cuda_max_allocated_mib": cuda_peak_mib(device)},
        "environment": {
            "device": str(device),
            "cpu": cpu_model(),
            "packages": package_versions(extra_packages),
            "git_commit": commit,
            "source_sha256": source,
        },
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def max_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (covers earlier runs of a sweep too)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_cuda_peak(device: torch.device) -> None:
    """Start a fresh CUDA peak-memory count for ``device`` (no-op off CUDA).

    :param device: the training device.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mib(device: torch.device) -> float | None:
    """CUDA memory peak since :func:`reset_cuda_peak`, in MiB; None off CUDA.

    :param device: the training device.
    """
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
