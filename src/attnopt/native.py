"""Small C kernels compiled at first use and cached (the optimizer's fused CPU step, the
counter-based dropout of the encoder).

A kernel's C source ships beside its Python module.  :func:`build` compiles it with the system
C compiler (``$CC``, else Python's, else ``cc``) as ``-O3 -march=native -fopenmp`` (the target
set by ``$ATTNOPT_KERNEL_ARCH``; then without OpenMP; then plain ``-O3``), into the kernel
cache ``$ATTNOPT_CACHE/kernels`` (default ``~/.cache/attnopt/kernels``), keyed by the source,
the compiler and its flags and the CPU's feature flags, keeping the newest :data:`KEEP_BUILDS`
of each kernel, and loads it with :mod:`ctypes`.  A second process reuses the cached library;
concurrent builders (DDP ranks) agree through an atomic rename.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sysconfig
import tempfile
from pathlib import Path

from attnopt.errors import UserError

#: The target CPU: ``-march=$ATTNOPT_KERNEL_ARCH`` (default ``native``; e.g. ``x86-64-v3`` for
#: a cache shared by machines with AVX2 but not AVX-512, or to test the portable code).
ARCH_ENV_VAR = "ATTNOPT_KERNEL_ARCH"
#: Builds kept in the cache folder per kernel (one per source version, compiler, flags and CPU).
KEEP_BUILDS = 8
_COMMON_FLAGS = ["-fno-math-errno", "-fPIC", "-shared"]


class KernelBuildError(UserError, RuntimeError):
    """A C kernel cannot be built or loaded here: no working C compiler, or a kernel cache
    folder (``$ATTNOPT_CACHE/kernels``) that cannot be written."""


def compiler() -> list[str]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


def flag_sets() -> tuple[list[str], ...]:
    arch = f"-march={os.environ.get(ARCH_ENV_VAR) or 'native'}"
    return (
        ["-O3", arch, "-fopenmp"],
        ["-O3", arch],  # a compiler without OpenMP (e.g. Apple clang): one thread
        ["-O3"],
    )


def cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def kernel_dir() -> Path:
    from attnopt.paths import cache_dir  # $ATTNOPT_CACHE, beside the token cache

    return cache_dir() / "kernels"


def prune(folder: Path, prefix: str, keep: int = KEEP_BUILDS) -> None:
    """Delete all but the ``keep`` newest builds of one kernel.  A process that has one loaded
    keeps its mapping; a later process that needs a deleted one rebuilds it (about a second)."""
    builds = []
    for path in folder.glob(f"{prefix}_*.so"):
        try:
            builds.append((path.stat().st_mtime_ns, path))
        except OSError:  # deleted meanwhile by another process
            pass
    for _, path in sorted(builds, reverse=True)[keep:]:
        try:
            path.unlink()
        except OSError:
            pass


def build(source: Path, prefix: str, what: str, fallback: str) -> ctypes.CDLL:
    """Compile ``source`` (or fetch it from the cache) as ``<prefix>_<key>.so`` and load it.

    ``what`` names the user of the kernel in errors ("MirrorDescent's fused CPU path") and
    ``fallback`` says what to do instead ("pass foreach=False for the single-tensor path").
    """
    cc = compiler()
    try:
        version = subprocess.run(cc + ["--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelBuildError(
            f"{what} compiles a small C kernel at first use, but the C compiler {' '.join(cc)!r} could not be "
            f"run ({exc}). Install a C compiler (gcc or clang) or set $CC; or {fallback}."
        ) from exc
    folder = kernel_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, suffix=".probe")
        probe.close()
    except OSError as exc:
        raise KernelBuildError(
            f"{what} keeps its compiled C kernel in the kernel cache {folder}, which cannot be written "
            f"({exc.strerror or exc}). Set $ATTNOPT_CACHE to a writable folder, or {fallback}."
        ) from exc
    text = source.read_bytes()
    errors = []
    for flags in flag_sets():
        key = hashlib.sha256(
            b"\0".join([text, version.encode(), " ".join(cc + flags + _COMMON_FLAGS).encode(),
                        cpu_signature().encode()])
        ).hexdigest()[:20]
        target = folder / f"{prefix}_{key}.so"
        if not target.exists():
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            cmd = cc + flags + _COMMON_FLAGS + [str(source), "-o", tmp, "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                os.unlink(tmp)
                errors.append(f"$ {' '.join(cmd)}\n{proc.stderr.strip()[-2000:]}")
                continue
            os.replace(tmp, target)  # atomic: concurrent builders (DDP ranks) agree
            prune(target.parent, prefix)
        try:
            return ctypes.CDLL(str(target))
        except OSError as exc:
            errors.append(f"loading {target}: {exc}")
    raise KernelBuildError(f"{what} could not build its C kernel:\n" + "\n".join(errors) + f"\nOr {fallback}.")


__all__ = ["build", "compiler", "cpu_signature", "flag_sets", "kernel_dir", "prune", "KernelBuildError",
           "ARCH_ENV_VAR", "KEEP_BUILDS"]
