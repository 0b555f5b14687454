r"""Max-margin attention SVMs (spec section 3): ℓp-AttSVM, decoder ℓp-SVM, token optimality.

>>> from attnopt.svm import att_svm, decoder_svm, token_optimality
>>> res = att_svm(X, Z, alpha, p=1.75)          # doctest: +SKIP
>>> res.solution, res.certificate.rel_gap       # doctest: +SKIP

``solver="fast"`` (the default through ``"auto"``) is the certified structured solver of
:mod:`attnopt.svm.fast`; ``solver="cvxpy"`` is the dense cvxpy + Clarabel reference.  Every
result carries a :class:`Certificate` computed from the solution and multipliers it returns.
"""

from attnopt.svm.api import att_svm, att_svm_nuclear, decoder_svm
from attnopt.svm.optimality import OptimalityReport, alpha_from_softmax, token_optimality
from attnopt.svm.problem import Certificate, SVMInfeasibleError, SVMInputTypeError, SVMResult

__all__ = [
    "att_svm",
    "att_svm_nuclear",
    "decoder_svm",
    "token_optimality",
    "alpha_from_softmax",
    "SVMResult",
    "Certificate",
    "SVMInfeasibleError",
    "SVMInputTypeError",
    "OptimalityReport",
]
