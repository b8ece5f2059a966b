"""securefed: federated GLMMs and Bayesian Federated Inference, protected.

One public face::

    import securefed as sf

    fit = sf.fit_glmm(sf.load_data("trauma"), "mortality ~ age + GCS + (1 | hospital)",
                      site_column="hospital", nagq=5, protect="secagg")
    fit.summary(); fit.to_dict(); fit.to_frame(); fit.confint(); fit.predict(new_rows)

Fitting: :func:`fit_glmm`, :func:`fit_bfi`, :func:`run_study` (a study file),
:func:`load_study`, :func:`load_data` (the bundled ``trauma`` and ``Nurses``).
Protection layers: :class:`PlaintextSum`, :class:`SecAggSum`, :class:`CkksSum`,
:class:`SecAggCkksSum` and :class:`DPOptions` (with ``"dp"`` in ``protect``).
Results: :class:`GLMMFit`, :class:`BFIReport`, :class:`StudyRun`. Errors:
:class:`InputError` (fix the input), :class:`BudgetExceededError`,
:class:`ProtocolError`.

Names load on first use (module ``__getattr__``), so ``import securefed`` stays
cheap; the command line (``securefed --help``) imports none of them.
"""

from __future__ import annotations

from importlib import import_module

__all__ = [
    "fit_glmm", "fit_bfi", "run_study", "load_study", "load_data",
    "PlaintextSum", "SecAggSum", "CkksSum", "SecAggCkksSum", "DPOptions",
    "GLMMFit", "BFIReport", "StudyRun", "GLMMOptions", "BFIOptions",
    "InputError", "BudgetExceededError", "ProtocolError",
]

_WHERE = {
    "fit_glmm": "securefed.api", "fit_bfi": "securefed.api", "run_study": "securefed.api",
    "load_data": "securefed.api", "load_study": "securefed.study",
    "PlaintextSum": "protocols.stack", "SecAggSum": "protocols.stack",
    "CkksSum": "protocols.stack", "SecAggCkksSum": "protocols.stack_secagg_ckks",
    "DPOptions": "securefed.privacy",
    "GLMMFit": "core_stats.results", "BFIReport": "securefed.bfi_run",
    "StudyRun": "securefed.study", "GLMMOptions": "securefed.glmm_run",
    "BFIOptions": "securefed.bfi_run",
    "InputError": "securefed.errors", "BudgetExceededError": "securefed.errors",
    "ProtocolError": "protocols.errors",
}


def __getattr__(name: str):
    """Load a public name from its module on first use (then it is a plain attribute)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'securefed' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
