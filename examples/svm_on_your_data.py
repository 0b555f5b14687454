"""Solve and certify the ℓp attention SVM on your own tokens, then ask whether the tokens that
a trained attention layer selects are globally or locally optimal.

    python examples/svm_on_your_data.py                 # random data
    python examples/svm_on_your_data.py tokens.npz      # your data: arrays X (n,T,d), Z (n,d), Y (n,), W (d,d), v (d,)
"""

from __future__ import annotations

import sys

import numpy as np

from attnopt.svm import SVMInfeasibleError, alpha_from_softmax, att_svm, decoder_svm, token_optimality


def load(path: str | None):
    if path is not None:
        f = np.load(path)
        return f["X"], f["Z"], f["Y"], f["W"], f["v"]
    rng = np.random.default_rng(0)
    n, T, d = 8, 6, 12
    X = rng.normal(size=(n, T, d))
    X /= np.linalg.norm(X, axis=-1, keepdims=True)
    Z = rng.normal(size=(n, d))
    Z /= np.linalg.norm(Z, axis=-1, keepdims=True)
    return X, Z, rng.choice([-1.0, 1.0], size=n), rng.normal(size=(d, d)), rng.normal(size=d)


def main() -> None:
    X, Z, Y, W, v = load(sys.argv[1] if len(sys.argv) > 1 else None)
    alpha = alpha_from_softmax(X, W, Z)             # the token each sample's softmax selects
    for p in (1.1, 2.0, 3.0):
        try:
            res = att_svm(X, Z, alpha, p=p)          # min ‖W‖_p  s.t. (x_{iα_i} − x_{it})ᵀ W z_i ≥ 1
        except SVMInfeasibleError as err:
            print(f"p = {p}: infeasible for samples {err.samples}")
            continue
        c = res.certificate
        print(f"p = {p}: ‖W^mm‖_p = {res.objective:.6g}, relative duality gap {c.rel_gap:.1e}, "
              f"max violation {c.max_violation:.1e}, {int(res.active.sum())} active constraints")
    vres = decoder_svm(X, Y, alpha, p=2.0)           # min ‖v‖_2  s.t. Y_i x_{iα_i}ᵀ v ≥ 1
    print(f"decoder SVM: ‖v^mm‖_2 = {vres.objective:.6g}")
    rep = token_optimality(X, Y, Z, v, alpha, p=2.0)
    print(f"the selected tokens are {rep.verdict}ly optimal" if rep.verdict != "neither"
          else "the selected tokens are neither globally nor locally optimal")


if __name__ == "__main__":
    main()
