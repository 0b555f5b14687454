"""ℓ1.1 mirror descent in a plain PyTorch training loop: a learning-rate schedule, bf16
autocast, and a checkpoint round trip that continues exactly where it stopped.

    python examples/optimizer_training_loop.py
"""

from __future__ import annotations

import io

import torch

from attnopt.optim import MirrorDescent


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))


def train(model, opt, sched, X, y, steps: int) -> float:
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # AMP: bf16 matmuls, float32 parameters
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(X).float().squeeze(-1), y)
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


def main() -> None:
    torch.manual_seed(0)
    X = torch.randn(256, 32)
    y = (X[:, :4].sum(-1) > 0).float()

    model = make_model()
    opt = MirrorDescent(model.parameters(), lr=0.05, p=1.1)        # ℓ1.1 mirror descent
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=60)
    first = train(model, opt, sched, X, y, steps=30)

    # checkpoint: model, optimizer (with its dual variable θ) and schedule
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)

    uninterrupted = train(model, opt, sched, X, y, steps=30)

    # resume into fresh objects and run the same 30 steps again
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = make_model()
    model2.load_state_dict(ckpt["model"])
    opt2 = MirrorDescent(model2.parameters(), lr=0.05, p=1.1)
    opt2.load_state_dict(ckpt["opt"])
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=60)
    sched2.load_state_dict(ckpt["sched"])
    resumed = train(model2, opt2, sched2, X, y, steps=30)

    same = all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    print(f"loss after 30 steps {first:.4f}; after 60: uninterrupted {uninterrupted:.4f}, resumed {resumed:.4f}")
    print(f"resumed run identical to the uninterrupted one: {same}")
    if not same:
        raise SystemExit("resume was not exact")


if __name__ == "__main__":
    main()
