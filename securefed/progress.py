"""Progress on the terminal (stderr) while rounds run; silent with --quiet."""

from __future__ import annotations

import pandas as pd

from core_stats.optimize import NewtonStep
from core_stats.results import GLMMFit
from securefed.errors import InputError


def protection_from_name(name: str):
    """The protection stack named on the command line."""
    from protocols.stack import PlaintextSum

    layers = [part.strip().lower() for part in name.split(",") if part.strip()]
    if layers in ([], ["none"]):
        return PlaintextSum()
    raise InputError(f"--protect {name!r} is not available: choose none")


def run_with_progress(frame: pd.DataFrame, opts, *, protect: str, quiet: bool) -> GLMMFit:
    from rich.console import Console

    from securefed.glmm_run import run_glmm

    protection = protection_from_name(protect)
    console = Console(stderr=True, quiet=quiet)

    def on_step(step: NewtonStep) -> None:
        console.log(f"Newton step {step.iteration}: logLik {step.value:.6f}, "
                    f"max |gradient| {step.max_abs_gradient:.2e}, step {step.max_abs_step:.2e}")

    with console.status("fitting (federated rounds)...", spinner="dots"):
        return run_glmm(frame, opts, protection=protection, on_step=on_step)
