"""Building the protection stack the user named on the command line.

``--protect`` lists layers separated by commas: a summing layer (``none``,
``secagg``, ``ckks``) and optionally ``dp``, which adds each site's
differential-privacy noise before its vector enters the sum.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.stack import DEFAULT_BOUND, CkksSum, DropPlan, PlaintextSum, SecAggSum
from securefed.errors import InputError
from securefed.preflight import require_package
from securefed.privacy import DPOptions, PrivacyGuard

__all__ = ["ProtectionOptions", "PrivateSum", "build_protection", "AVAILABLE"]

AVAILABLE = ("none", "secagg", "ckks", "secagg,ckks", "dp", "secagg,dp", "ckks,dp",
             "secagg,ckks,dp")
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
    dp: DPOptions | None = None


class PrivateSum:
    """A summing layer plus the sites' differential-privacy step (``privacy``).

    The coordinator applies ``privacy`` to every site's vector before the
    vector is logged or enters the sum (:meth:`Coordinator.secure_sum`).
    """

    def __init__(self, inner, privacy: PrivacyGuard) -> None:
        self.inner = inner
        self.privacy = privacy
        self.name = "dp" if inner.name == "none" else f"{inner.name},dp"

    def aggregate(self, vectors, *, round_id: int, purpose: str):
        return self.inner.aggregate(vectors, round_id=round_id, purpose=purpose)

    def __getattr__(self, attr: str):
        if attr in ("bound", "neighbours", "threshold", "min_contributors", "drop"):
            return getattr(self.inner, attr)
        raise AttributeError(attr)


def parse_sites(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else ()


def build_protection(opts: ProtectionOptions, site_names: list[str], family: str | None = None,
                     *, remote: bool = False):
    """The stack for ``opts.protect``; InputError for anything unknown or inconsistent.

    ``remote``: the sites (and, under ``ckks``, the key holder) are other
    processes; the coordinator's ``ckks`` layer then holds no key at all.
    """
    layers = [part.strip().lower() for part in opts.protect.split(",") if part.strip()]
    if len(set(layers)) != len(layers):
        raise InputError(f"--protect {opts.protect!r} names a layer twice")
    if "ckks" in layers:
        require_package("tenseal", "--protect ckks")
    if "dp" in layers:
        layers.remove("dp")
        summing = _build_summing(opts, layers or ["none"], site_names, remote)
        return _with_privacy(opts, summing, site_names, family)
    if opts.dp is not None:
        raise InputError("--epsilon and the --dp-* options need 'dp' in --protect "
                         "(e.g. --protect secagg,dp)")
    return _build_summing(opts, layers, site_names, remote)


def _with_privacy(opts: ProtectionOptions, summing, site_names: list[str], family: str | None):
    if opts.dp is None:
        raise InputError("--protect ...,dp needs a budget: --epsilon E (and --delta D)")
    opts.dp.check(family or "binomial")
    hides_single_vectors = summing.name != "none"
    if hides_single_vectors:
        default = max(3, (2 * len(site_names)) // 3 + 1)
        m = opts.dp.min_contributors or default
        if not 1 <= m <= len(site_names):
            raise InputError(f"--dp-min-contributors must be between 1 and {len(site_names)}")
        summing.min_contributors = max(summing.min_contributors, m)
    else:
        m = 1  # the coordinator sees every vector: each site adds the whole noise
    frac_bits = None
    if hides_single_vectors:
        from protocols.encoding import FixedPointEncoder

        bound, n_sites = summing.bound, len(site_names)

        def frac_bits(length: int):
            return FixedPointEncoder.for_sum(bound, n_sites, length).frac_bits

    guard = PrivacyGuard.create(opts.dp, site_names, m, frac_bits)
    return PrivateSum(summing, guard)


def _build_summing(opts: ProtectionOptions, layers: list[str], site_names: list[str],
                   remote: bool = False):
    layers = sorted(layers, key=["none", "secagg", "ckks"].index) \
        if set(layers) <= {"none", "secagg", "ckks"} else layers
    with_secagg = layers in (["secagg"], ["secagg", "ckks"])
    if opts.drop_sites or opts.drop_phase:
        if not with_secagg:
            raise InputError("--drop-sites simulates dropouts inside secure aggregation: "
                             "use it with --protect secagg (or secagg,ckks)")
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
    if with_secagg:
        if opts.neighbours is not None and not 2 <= opts.neighbours < len(site_names):
            raise InputError("--secagg-neighbours must be at least 2 and below the number "
                             "of sites")
        drop = (DropPlan(opts.drop_sites, opts.drop_phase, opts.drop_round)
                if opts.drop_sites else None)
        if layers == ["secagg", "ckks"]:
            from protocols.stack_secagg_ckks import SecAggCkksSum

            return SecAggCkksSum(bound=opts.bound, neighbours=opts.neighbours,
                                 threshold=opts.threshold, drop=drop)
        return SecAggSum(bound=opts.bound, neighbours=opts.neighbours, threshold=opts.threshold,
                         drop=drop)
    if layers == ["ckks"]:
        if remote:  # the key pair is the key holder's, made on its own machine
            from securefed.transport.flower_ckks import RemoteCkksSum

            return RemoteCkksSum(bound=opts.bound)
        return CkksSum(bound=opts.bound)
    raise InputError(f"--protect {opts.protect!r} is not a known stack: choose one of "
                     f"{', '.join(AVAILABLE)}")


def protection_for(frame, site_column: str, opts: ProtectionOptions, family: str | None = None):
    """Build the stack for the sites of ``frame`` (InputError if the column is missing)."""
    if site_column not in frame.columns:
        source = frame.attrs.get("source", "the data")
        raise InputError(f"column '{site_column}' is not in {source}")
    names = sorted({str(v) for v in frame[site_column].dropna().unique()})
    return build_protection(opts, names, family)
