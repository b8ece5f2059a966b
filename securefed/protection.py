"""Building the protection stack the user named on the command line."""

from __future__ import annotations

from dataclasses import dataclass

from protocols.stack import DEFAULT_BOUND, CkksSum, DropPlan, PlaintextSum, SecAggSum
from securefed.errors import InputError

__all__ = ["ProtectionOptions", "build_protection", "AVAILABLE"]

AVAILABLE = ("none", "secagg", "ckks")
DROP_PHASES = ("after-key-exchange", "after-key-sharing", "after-masked-input", "during-unmask")


@dataclass(frozen=True)
class ProtectionOptions:
    protect: str = "none"
    neighbours: int | None = None
    threshold: int | None = None
    bound: float = DEFAULT_BOUND
    drop_sites: tuple[str, ...] = ()
    drop_phase: str | None = None
    drop_round: int = 1


def parse_sites(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else ()


def build_protection(opts: ProtectionOptions, site_names: list[str]):
    """The layer for ``opts.protect``; InputError for anything unknown or inconsistent."""
    layers = [part.strip().lower() for part in opts.protect.split(",") if part.strip()]
    if opts.drop_sites or opts.drop_phase:
        if layers != ["secagg"]:
            raise InputError("--drop-sites simulates dropouts inside secure aggregation: "
                             "use it with --protect secagg")
        if not opts.drop_sites or opts.drop_phase not in DROP_PHASES:
            raise InputError("--drop-sites needs --drop-phase, one of " + ", ".join(DROP_PHASES))
        unknown = [s for s in opts.drop_sites if s not in site_names]
        if unknown:
            raise InputError(f"--drop-sites: no site named {unknown[0]!r} "
                             f"(sites: {', '.join(site_names[:10])}...)")
    if opts.bound <= 0:
        raise InputError("--bound must be positive")
    if layers in ([], ["none"]):
        return PlaintextSum()
    if len(site_names) < 3:
        raise InputError(f"--protect {opts.protect} needs at least 3 sites; the data has "
                         f"{len(site_names)}")
    if layers == ["secagg"]:
        if opts.neighbours is not None and not 2 <= opts.neighbours < len(site_names):
            raise InputError("--secagg-neighbours must be at least 2 and below the number "
                             "of sites")
        drop = (DropPlan(opts.drop_sites, opts.drop_phase, opts.drop_round)
                if opts.drop_sites else None)
        return SecAggSum(bound=opts.bound, neighbours=opts.neighbours, threshold=opts.threshold,
                         drop=drop)
    if layers == ["ckks"]:
        return CkksSum(bound=opts.bound)
    raise InputError(f"--protect {opts.protect!r} is not available yet: choose one of "
                     f"{', '.join(AVAILABLE)}")


def protection_for(frame, site_column: str, opts: ProtectionOptions):
    """Build the stack for the sites of ``frame`` (InputError if the column is missing)."""
    if site_column not in frame.columns:
        source = frame.attrs.get("source", "the data")
        raise InputError(f"column '{site_column}' is not in {source}")
    names = sorted({str(v) for v in frame[site_column].dropna().unique()})
    return build_protection(opts, names)
