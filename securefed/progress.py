"""Progress on the terminal (stderr) while rounds run; silent with --quiet."""

from __future__ import annotations

import pandas as pd

from core_stats.optimize import NewtonStep
from core_stats.results import GLMMFit


def run_with_progress(frame: pd.DataFrame, opts, *, protect, quiet: bool,
                      audit_log=None, audit_keys=None) -> GLMMFit:
    """Run a GLMM fit, logging each Newton step to stderr unless ``quiet``."""
    from rich.console import Console

    from securefed.glmm_run import run_glmm
    from securefed.protection import protection_for

    protection = protection_for(frame, opts.site_column, protect, opts.family)
    console = Console(stderr=True, quiet=quiet)

    def on_step(step: NewtonStep) -> None:
        console.log(f"Newton step {step.iteration}: logLik {step.value:.6f}, "  # nan under DP
                    f"max |gradient| {step.max_abs_gradient:.2e}, step {step.max_abs_step:.2e}")

    with console.status("fitting (federated rounds)...", spinner="dots"):
        return run_glmm(frame, opts, protection=protection, on_step=on_step, audit_log=audit_log,
                        audit_keys=audit_keys)
