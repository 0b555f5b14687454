"""The fused CPU kernel (``MirrorDescent(fused=True)`` on CPU tensors): what the shared
path tests in test_optim.py do not reach — every exponent route on multi-chunk tensors with
ragged tails and the non-temporal store, the float32 and float64 general powers, the
AVX-512 cube-root powers (1/(p−1) = n + 1/3 or n + 2/3) in ulps over every float32 exponent, the
fallback for tensors the kernel does not take, the exact non-finite count, the build cache
and its errors, and memory safety (the kernel built with AddressSanitizer)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import warnings

import pytest
import torch

from attnopt.mirror import grad_psi_star
from attnopt.optim import MirrorDescent, NonFiniteGradientError
from attnopt.optim import _cpu
from optim_reference import HAVE_CC, dual_tolerance, grads_like, make_params, reference_step, train_steps

pytestmark = pytest.mark.skipif(not HAVE_CC, reason="no C compiler for the fused CPU kernel")


def _steps(params, opt, k0=0, n=2):
    train_steps(params, opt, n=n, seed=k0)


# p = 2 (own dual), 1.5 (square), 3 (sqrt), 1.1 / 1.01 (int), 1.4 (half-int), 1.3 / 1.75 / 5
# (general, float32 power), 1.15 (general with 1/(p-1) > 4: the float64 power)
@pytest.mark.parametrize("p", [2.0, 1.5, 3.0, 1.1, 1.01, 1.4, 1.3, 1.75, 5.0, 1.15])
def test_every_route_on_large_ragged_tensors_against_float64(p):
    shapes = [(300_001,), (70, 301), (5,)]  # several chunks, the streamed store, ragged tails
    params = make_params(*shapes)
    w0 = [x.detach().clone() for x in params]
    grads = grads_like(params)
    for x, g in zip(params, grads):
        x.grad = g.clone()
    lr = 0.01
    MirrorDescent(params, lr=lr, p=p, fused=True).step()
    for x, w, g in zip(params, w0, grads):
        ref, _ = reference_step(w, g, lr=lr, p=p)
        tol = dual_tolerance(ref, w, lr * g.double(), p)
        err = (x.detach().double() - ref).abs()
        assert bool((err <= tol).all()), f"p={p}: max excess {(err - tol).max().item():.3g}"


def _assert_round_trip_over_float32_range(p, label=""):
    """The inverse map from 1e-44 (subnormal) to 3e38, with its over/underflow clamped or
    flushed as the eager path does: a zero-gradient step keeps W exactly (θ did not move), then
    a step that shrinks every θ by 2^-10 must give W = ∇ψ*(θ) to a few ulp."""
    mags = torch.logspace(-44, 38, 4001, dtype=torch.float64).float()
    w = torch.nn.Parameter(torch.cat([mags, -mags, torch.zeros(3)]))
    ref = w.detach().clone()
    with warnings.catch_warnings():  # p > 2: "weights beyond float32 θ's range" (tested elsewhere)
        warnings.simplefilter("ignore", RuntimeWarning)
        opt = MirrorDescent([w], lr=0.1, p=p, fused=True)
        w.grad = torch.zeros_like(w)
        opt.step()
        assert torch.equal(w.detach(), ref)
        theta = opt.state[w]["dual"]
        before = theta.clone()
        w.grad = theta / (1024 * 0.1)  # θ ← θ (1 − 2^-10): every θ that is not 0 moves
        opt.step()
    moved = theta != before  # θ = 0 (w = 0, or an underflow of |w|^(p−1) for p > 2) stays, and so does w
    assert torch.equal(w.detach()[~moved], ref[~moved])
    want = grad_psi_star(theta.double(), p).clamp(-torch.finfo(torch.float32).max, torch.finfo(torch.float32).max)
    got = w.detach().double()
    assert bool(torch.isfinite(got).all())
    # within a few float32 ulp of the exact inverse of the stored θ (and exactly 0 at 0)
    tiny = torch.finfo(torch.float32).smallest_normal
    rel = ((got - want).abs() / want.abs().clamp_min(tiny))[moved]
    assert rel.max().item() <= 8 * 2.0**-24, (label, p, rel.max().item())
    assert bool((got[-3:] == 0).all()) and bool((got.sign() == ref.double().sign())[want.abs() > tiny].all())


@pytest.mark.parametrize("p", [1.3, 1.75, 2.5, 5.0, 1.15, 1.07])  # float32 power; float64 for the last two
def test_general_power_over_the_whole_float32_range(p):
    _assert_round_trip_over_float32_range(p)


def _kernel_inverse(theta: torch.Tensor, p: float) -> torch.Tensor:
    """The kernel's w = sign(θ)|θ|^(1/(p−1)) for a float32 θ: a step from θ = 0 with lr 1 and
    gradient −θ lands exactly on θ (the weights are written where θ moved, so w starts as the
    signed zeros of θ)."""
    w = torch.where(theta == 0, theta, torch.zeros_like(theta))
    _cpu.cpu_fused_mirror_descent([w], [-theta], [torch.zeros_like(theta)], [None], lr=1.0, p=p,
                                  normalize=False, eps=0.0, momentum=0.0, weight_decay=0.0, maximize=False)
    return w


def _float32_ulps(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """|got − want| in float32 ulps of want (float64; the subnormal ulp 2^-149 below 2^-126)."""
    exp = torch.frexp(want.abs())[1].clamp_min(-125) - 1
    return (got.double() - want).abs() / torch.ldexp(torch.ones_like(want), exp - 23)


_AVX512 = platform.machine().lower() in ("x86_64", "amd64") and not os.environ.get(_cpu.ARCH_ENV_VAR) \
    and " avx512f " in f" {_cpu._cpu_signature()} "


# e = 1/(p−1) = n + f/3: 1/3, 2/3, 4/3, 5/3, 7/3, 10/3, 11/3, and the largest error measured over
# every positive float32 (4/3, 2/3) or every 127th (the others) with a margin; the log/exp power
# they replaced measured 1.2, 1.6, 2.6, 3.3, 4.4, 5.8, 5.8 ulp on the same values.
@pytest.mark.skipif(not _AVX512, reason="the cube-root power is the AVX-512 build's")
@pytest.mark.parametrize("p, bound", [(4.0, 1.25), (2.5, 2.0), (1.75, 1.25), (1.6, 2.5), (1 + 3 / 7, 2.0),
                                      (1.3, 3.0), (1 + 3 / 11, 3.5)])
def test_cube_root_powers_over_every_float32_exponent(p, bound):
    """The AVX-512 kernel computes |θ|^e for e = n + f/3 as |θ|^n · cbrt|θ|^f (no log/exp): every
    exponent field with 512 mantissas each, subnormals included, against float64, in ulps of the
    result (overflow clamps to the largest float32, as the eager path does)."""
    gen = torch.Generator().manual_seed(0)
    mant = torch.randint(0, 1 << 23, (255, 512), generator=gen, dtype=torch.int32)
    bits = (torch.arange(255, dtype=torch.int32)[:, None] << 23) | mant
    theta = bits.flatten().view(torch.float32)
    theta = torch.cat([theta, -theta, torch.tensor([0.0, -0.0, 1.0, 8.0, 27.0])])
    e = 1.0 / (p - 1.0)
    top = torch.finfo(torch.float32).max
    want = (theta.double().abs() ** e).clamp_max(top) * theta.double().sign()
    got = _kernel_inverse(theta, p)
    assert bool(torch.isfinite(got).all())
    ulps = _float32_ulps(got, want)
    assert ulps.max().item() <= bound, (p, ulps.max().item(), theta[ulps.argmax()].item())
    assert torch.equal(torch.signbit(got[:-3]), torch.signbit(theta[:-3]))  # ±0 keeps its sign


def test_fallback_tensors_and_mixed_dtypes_match_the_single_tensor_path():
    """float64 and float16 weights, a float64 dual, a non-contiguous weight: the single-tensor
    path updates them inside the same fused call; bfloat16 goes through the kernel."""

    def make():
        gen = torch.Generator().manual_seed(3)
        base = torch.randn(6, 9, generator=gen) * 0.1
        return [
            torch.nn.Parameter(torch.randn(40, 7, generator=gen) * 0.1),
            torch.nn.Parameter((torch.randn(33, generator=gen) * 0.1).to(torch.bfloat16)),
            torch.nn.Parameter((torch.randn(12, generator=gen) * 0.1).double()),
            torch.nn.Parameter((torch.randn(10, generator=gen) * 0.1).half()),
            torch.nn.Parameter(base.t()),  # non-contiguous
        ]

    a, b = make(), make()
    assert not a[4].is_contiguous()
    kw = dict(lr=0.03, p=1.75, momentum=0.5, weight_decay=0.1)
    oa = MirrorDescent(a, fused=True, **kw)
    ob = MirrorDescent(b, foreach=False, **kw)
    for k in range(3):
        for params, opt in ((a, oa), (b, ob)):
            for x, g in zip(params, grads_like(params, seed=k)):
                x.grad = g
            opt.step()
    for x, y in zip(a, b):
        rtol = {torch.float32: 3e-6, torch.bfloat16: 1e-2, torch.float64: 1e-12, torch.float16: 2e-3}[x.dtype]
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-6 if x.dtype != torch.float64 else 1e-14)
    # a float64 dual for float32 weights: the fallback too
    c, d = make_params((20, 3)), make_params((20, 3))
    oc = MirrorDescent(c, lr=0.05, p=1.3, fused=True, dual_dtype=torch.float64)
    od = MirrorDescent(d, lr=0.05, p=1.3, foreach=False, dual_dtype=torch.float64)
    _steps(c, oc)
    _steps(d, od)
    torch.testing.assert_close(c[0], d[0], rtol=1e-7, atol=0)


def test_the_step_bumps_the_version_counter_like_an_in_place_op():
    w = make_params((8, 3))[0]
    opt = MirrorDescent([w], lr=0.1, p=1.5, fused=True)
    w.grad = torch.ones_like(w)
    opt.step()
    v = w._version
    opt.step()
    assert w._version > v  # autograd sees the in-place write (a saved w would be flagged)
    # and the optimizer does not mistake its own write for an outside edit: θ is kept
    theta = opt.state[w]["dual"]
    opt.step()
    assert opt.state[w]["dual"] is theta


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_count_is_exact_and_raise_or_skip_change_nothing(dtype, bad):
    g = torch.zeros(50_000, dtype=dtype)
    g[[0, 17, 49_999]] = bad
    assert _cpu.count_nonfinite([g, torch.ones(3, dtype=dtype)]) == 3
    assert _cpu.count_nonfinite([torch.full((7,), torch.finfo(dtype).max, dtype=dtype)]) == 0

    params = make_params((300, 200), (9,), dtype=dtype)
    opt = MirrorDescent(params, lr=0.1, p=1.5, fused=True)
    _steps(params, opt, n=1)
    before = [x.detach().clone() for x in params]
    params[0].grad[123, 45] = bad
    with pytest.raises(NonFiniteGradientError, match=r"parameter 0 .*shape \(300, 200\)"):
        opt.step()
    for x, b in zip(params, before):
        assert torch.equal(x.detach(), b)
    opt.nonfinite = "skip"
    opt.step()
    assert opt.skipped_steps == 1
    for x, b in zip(params, before):
        assert torch.equal(x.detach(), b)


def test_build_is_cached_and_a_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNOPT_CACHE", str(tmp_path))
    monkeypatch.setattr(_cpu, "_lib", None)
    _cpu.load()
    built = list((tmp_path / "kernels").glob("attnopt_md_*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(_cpu, "_lib", None)
    _cpu.load()  # same source, compiler and CPU: the cached library is loaded, not rebuilt
    assert built[0].stat().st_mtime_ns == stamp
    assert list((tmp_path / "kernels").glob("*.so")) == built

    # older builds (another source version, compiler or CPU) are pruned to the newest few
    for k in range(_cpu.KEEP_BUILDS + 3):
        old = tmp_path / "kernels" / f"attnopt_md_old{k:02d}.so"
        old.write_bytes(b"")
        os.utime(old, ns=(stamp - (k + 1) * 10**9, stamp - (k + 1) * 10**9))
    built[0].unlink()
    monkeypatch.setattr(_cpu, "_lib", None)
    _cpu.load()  # a new build
    left = {p.name for p in (tmp_path / "kernels").glob("*.so")}
    assert left == {built[0].name} | {f"attnopt_md_old{k:02d}.so" for k in range(_cpu.KEEP_BUILDS - 1)}

    monkeypatch.setattr(_cpu, "_lib", None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="C compiler"):
        MirrorDescent([torch.nn.Parameter(torch.ones(2))], lr=0.1, p=1.5, fused=True)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 targets")
@pytest.mark.parametrize("arch", ["x86-64-v3", "x86-64"])  # AVX2 (8-lane vectors, no AVX-512), SSE2
def test_portable_builds_agree_with_the_single_tensor_path(arch, tmp_path, monkeypatch):
    """The code that machines without AVX-512 run (the block loops and the generic-vector
    powers), built here for older targets and checked on every route."""
    monkeypatch.setenv("ATTNOPT_CACHE", str(tmp_path))
    monkeypatch.setenv(_cpu.ARCH_ENV_VAR, arch)
    monkeypatch.setattr(_cpu, "_lib", None)
    for p in (2.0, 1.5, 3.0, 1.1, 1.4, 1.3, 1.75, 5.0, 1.15):
        # float32: one step against the float64 formula (a build without FMA rounds θ − ηg
        # differently from torch, which matters only where the problem itself is ill-conditioned)
        params = make_params((3001,), (70, 31))
        w0 = [x.detach().clone() for x in params]
        grads = grads_like(params)
        for x, g in zip(params, grads):
            x.grad = g.clone()
        MirrorDescent(params, lr=0.02, p=p, fused=True, momentum=0.5 if p == 1.3 else 0.0).step()
        for x, w, g in zip(params, w0, grads):
            ref, _ = reference_step(w, g, lr=0.02, p=p)
            err = (x.detach().double() - ref).abs() - dual_tolerance(ref, w, 0.02 * g.double(), p)
            assert bool((err <= 0).all()), f"{arch} p={p}: max excess {err.max().item():.3g}"
        # bfloat16 weights (float32 θ): against the single-tensor path, to a bf16 ulp
        a = make_params((3001,), (70, 31), dtype=torch.bfloat16)
        b = make_params((3001,), (70, 31), dtype=torch.bfloat16)
        _steps(a, MirrorDescent(a, fused=True, lr=0.02, p=p))
        _steps(b, MirrorDescent(b, foreach=False, lr=0.02, p=p))
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-2, atol=1e-6, msg=f"{arch} p={p} bfloat16")
    for p in (1.3, 2.5, 1.15):  # the general power, float32 and float64
        _assert_round_trip_over_float32_range(p, arch)
    assert len(list((tmp_path / "kernels").glob("*.so"))) == 1


# --- memory safety: the kernel built with AddressSanitizer -------------------------------------

_ASAN_SCRIPT = r"""
import sys
from pathlib import Path

import torch

from attnopt.optim import MirrorDescent, _cpu

if len(sys.argv) > 1:
    _cpu.SOURCE = Path(sys.argv[1])  # a deliberately broken copy: the check must catch it
torch.manual_seed(0)
sizes = [1, 15, 17, 513, 4099, (1 << 18) + 3]  # ragged tails, several chunks, the streamed store
options = [{}, dict(normalize=True, momentum=0.9, weight_decay=0.01)]
for p in (2.0, 1.5, 3.0, 1.1, 1.4, 1.3, 1.15):  # every exponent route, the float64 power last
    for dtype in (torch.float32, torch.bfloat16):
        for opts in options:
            params = [torch.nn.Parameter(torch.randn(n).to(dtype)) for n in sizes]
            opt = MirrorDescent(params, lr=0.01, p=p, fused=True, **opts)
            for _ in range(2):
                for x in params:
                    x.grad = torch.randn(x.shape).to(dtype)
                opt.step()
print("ran", flush=True)
"""


def _asan_runtime() -> str | None:
    """The AddressSanitizer runtime of the kernel's compiler (GCC's ``libasan.so``), if it
    exists and starts here."""
    try:
        out = subprocess.run(_cpu._compiler() + ["-print-file-name=libasan.so"], capture_output=True,
                             text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not (os.path.isabs(out) and os.path.exists(out)):
        return None
    # the runtime must also start on this machine (it cannot under some kernels' address layouts)
    env = dict(os.environ, LD_PRELOAD=out, ASAN_OPTIONS="detect_leaks=0")
    try:
        ok = subprocess.run([sys.executable, "-c", "pass"], env=env, capture_output=True, timeout=120).returncode == 0
    except subprocess.SubprocessError:
        ok = False
    return out if ok else None


def _run_under_asan(tmp_path, runtime: str, *args: str):
    script = tmp_path / "asan_steps.py"
    script.write_text(_ASAN_SCRIPT)
    env = dict(os.environ, ATTNOPT_CACHE=str(tmp_path / "cache"), LD_PRELOAD=runtime,
               CC=" ".join(_cpu._compiler() + ["-fsanitize=address", "-fno-omit-frame-pointer"]),
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1")
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(platform.system() != "Linux", reason="LD_PRELOAD of the sanitizer runtime")
def test_kernel_is_memory_safe_under_address_sanitizer(tmp_path):
    """Every route of the C kernel, built with ``-fsanitize=address`` and run with the sanitizer
    preloaded (so torch's tensors get red zones too): no access outside a tensor.  The same
    check on a copy with a one-element overrun in the weight store must fail."""
    runtime = _asan_runtime()
    if runtime is None:
        pytest.skip("no AddressSanitizer runtime (libasan.so) that starts here")
    clean = _run_under_asan(tmp_path, runtime)
    assert clean.returncode == 0 and "ran" in clean.stdout, clean.stderr[-4000:]
    assert "AddressSanitizer" not in clean.stderr

    source = _cpu.SOURCE.read_text()
    tail_loop = "    for (; j < L; j++) w[j] = v[j];\n}"
    assert source.count(tail_loop) == 1
    broken = tmp_path / "broken_kernel.c"
    broken.write_text(source.replace(tail_loop, "    for (; j <= L; j++) w[j] = v[j];\n}"))
    caught = _run_under_asan(tmp_path, runtime, str(broken))
    # the overrun writes past a tensor (heap) and reads past the block buffer (stack): whichever
    # OpenMP thread gets there first is reported
    assert caught.returncode != 0, caught.stdout[-2000:]
    assert re.search(r"AddressSanitizer: (heap|stack)-buffer-overflow", caught.stderr), caught.stderr[-4000:]
