"""Exact resume (issue 15): save → a new model and optimizer → load → continue is bit-identical
to the uninterrupted run, for every p and path; an edit made before loading is still seen."""

from __future__ import annotations

import io

import pytest
import torch

from attnopt.files import load_checkpoint
from attnopt.optim import MirrorDescent
from optim_reference import HAVE_CC, grads_like, make_params

P_VALUES = [1.1, 1.3, 1.75, 3.0]
KWARGS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}, "compiled": {"compiled": True},
          "torch.compile": {}}
PATHS = [
    "default", "foreach",
    pytest.param("fused", marks=pytest.mark.skipif(not HAVE_CC, reason="no C compiler")),
    pytest.param("compiled", marks=pytest.mark.slow),
    pytest.param("torch.compile", marks=pytest.mark.slow),  # torch.compile(opt.step)
]
SHAPES = ((70, 31), (300,), (5,))


def _run(params, opt, first, last, compile_step=False):
    step = torch.compile(opt.step) if compile_step else opt.step
    for k in range(first, last):
        for x, g in zip(params, grads_like(params, seed=k, scale=0.3)):
            x.grad = g
        step()


def _make(path, p, dtype):
    params = make_params(*SHAPES, dtype=dtype)
    opt = MirrorDescent(params, lr=0.03, p=p, momentum=0.5, weight_decay=0.05, **KWARGS[path])
    return params, opt, path == "torch.compile"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("p", P_VALUES)
def test_resume_is_bit_identical(p, path, dtype):
    if dtype == torch.bfloat16 and "compile" in path:
        pytest.skip("one dtype suffices for the compiled paths (compile time)")
    a, opt_a, compile_step = _make(path, p, dtype)
    if compile_step:
        # torch.compile(opt.step) guards on the optimizer object: every optimizer compiled in
        # this process counts towards dynamo's recompile limit (8), past which a run goes on
        # eagerly, with other roundings than the compiled one; start from no graphs, so that
        # both runs here are compiled whatever ran before in this worker
        torch._dynamo.reset()
    _run(a, opt_a, 0, 3, compile_step)
    buf = io.BytesIO()
    torch.save({"weights": [x.detach() for x in a], "optim": opt_a.state_dict()}, buf)  # one file, as a checkpoint
    _run(a, opt_a, 3, 6, compile_step)  # the uninterrupted run

    b, opt_b, _ = _make(path, p, dtype)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    with torch.no_grad():
        for x, w in zip(b, ckpt["weights"]):
            x.copy_(w)  # as model.load_state_dict does: the version counter moves
    opt_b.load_state_dict(ckpt["optim"])
    _run(b, opt_b, 3, 6, compile_step)
    for x, y in zip(a, b):
        assert torch.equal(x, y), (x - y).abs().max()
    for x, y in zip(a, b):
        assert torch.equal(opt_a.state[x]["dual"], opt_b.state[y]["dual"])


@pytest.mark.parametrize("path", PATHS[:3])
def test_an_edit_before_loading_is_resynchronised_only_where_made(path, tmp_path):
    a, opt_a, _ = _make(path, 1.75, torch.float32)
    _run(a, opt_a, 0, 2)
    torch.save({"weights": [x.detach() for x in a], "optim": opt_a.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")  # weights_only loading: the state dict is plain data
    b, opt_b, _ = _make(path, 1.75, torch.float32)
    with torch.no_grad():
        for x, w in zip(b, ckpt["weights"]):
            x.copy_(w)
        b[0][3, 4] = 0.5  # edited after the save
    opt_b.load_state_dict(ckpt["optim"])
    saved = ckpt["optim"]["state"][0]["dual"].clone()
    for x in b:
        x.grad = torch.zeros_like(x)
    opt_b.param_groups[0]["momentum"] = 0.0
    opt_b.param_groups[0]["weight_decay"] = 0.0
    opt_b.step()  # a zero step: θ as resynchronised
    theta = opt_b.state[b[0]]["dual"]
    assert theta[3, 4].item() == pytest.approx(0.5**0.75, rel=1e-6)
    mask = torch.ones_like(theta, dtype=torch.bool)
    mask[3, 4] = False
    assert torch.equal(theta[mask], saved[mask])  # every other entry kept exactly


def test_state_dict_holds_the_weights_without_copying_them():
    params = make_params((4, 3))
    opt = MirrorDescent(params, lr=0.1, p=1.5)
    _run(params, opt, 0, 1)
    sd = opt.state_dict()
    assert sd["state"][0]["synced_weights"].data_ptr() == params[0].data_ptr()
    assert "synced_weights" not in opt.state[params[0]]  # only in the returned dict
