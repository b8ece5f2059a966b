"""CKKS layer: decryption error, ciphertext bytes and overhead against plaintext sums.

Run from the repository root::

    python -m benchmarks.ckks_bench            # writes benchmarks/results/ckks{,_stack}.{csv,md}

Each site holds a vector whose coordinate j has a public bound B_j drawn
log-uniformly in [1e-3, 1e5] and a value uniform in [-B_j, B_j]. We report the
error of the released sum against the float64 plaintext sum, for vectors
pre-scaled with :class:`CoordinateScaling` (the intended use) and raw.

A second table runs whole layers (``secagg``, ``ckks``, ``secagg,ckks``)
in-process on the same vectors: bytes each site sends and wall time of one
round, key generation excluded.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from protocols.ckks import (
    CkksKeyHolder,
    CkksParams,
    CoordinateScaling,
    add_ciphertexts,
    encrypt_ring_vector,
    encrypt_vector,
)
from protocols.stack import CkksSum, SecAggSum
from protocols.stack_secagg_ckks import SecAggCkksSum

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Row:
    """One benchmark configuration and its measurements."""

    mode: str
    n_sites: int
    dim: int
    chunks: int
    max_abs_error: float
    max_error_over_bound: float
    max_rel_error: float
    bytes_per_site: int
    plaintext_bytes_per_site: int
    byte_overhead: float
    encrypt_ms_per_site: float
    add_ms_total: float
    decrypt_ms: float
    plaintext_sum_ms: float


def _errors(released: np.ndarray, truth: np.ndarray, bounds: np.ndarray) -> tuple[float, ...]:
    error = np.abs(released - truth)
    big = np.abs(truth) > 0.1 * bounds  # relative error only where the sum does not cancel
    relative = error[big] / np.abs(truth[big])
    return float(error.max()), float((error / bounds).max()), float(relative.max())


def run_real(holder: CkksKeyHolder, n_sites: int, dim: int, prescale: bool, seed: int) -> Row:
    """Encrypt, add and decrypt one real-valued round."""
    rng = np.random.default_rng(seed)
    bounds = 10.0 ** rng.uniform(-3, 5, size=dim)
    values = bounds * rng.uniform(-1, 1, size=(n_sites, dim))
    scaling = CoordinateScaling.from_bounds(bounds)
    public = holder.public_context()
    start = time.perf_counter()
    ciphertexts = [encrypt_vector(public, scaling.apply(v) if prescale else v) for v in values]
    encrypt_s = (time.perf_counter() - start) / n_sites
    start = time.perf_counter()
    aggregate = add_ciphertexts(public, ciphertexts)
    add_s = time.perf_counter() - start
    start = time.perf_counter()
    decrypted = holder.decrypt_sum(aggregate, dim)
    released = scaling.invert(decrypted) if prescale else decrypted
    decrypt_s = time.perf_counter() - start
    start = time.perf_counter()
    truth = values.sum(axis=0)
    plain_s = time.perf_counter() - start
    size = ciphertexts[0].nbytes
    return Row(
        "real, pre-scaled" if prescale else "real, raw",
        n_sites,
        dim,
        len(ciphertexts[0].chunks),
        *_errors(released, truth, bounds),
        size,
        8 * dim,
        size / (8 * dim),
        1e3 * encrypt_s,
        1e3 * add_s,
        1e3 * decrypt_s,
        1e3 * plain_s,
    )


def run_ring(holder: CkksKeyHolder, n_sites: int, dim: int, seed: int) -> Row:
    """Masked 64-bit ring elements as 16-bit limbs: the sum must be exact."""
    rng = np.random.default_rng(seed)
    masked = rng.integers(0, 2**63, size=(n_sites, dim), dtype=np.uint64) * np.uint64(2)
    public = holder.public_context()
    start = time.perf_counter()
    ciphertexts = [encrypt_ring_vector(public, m, ring_bits=64, limb_bits=16) for m in masked]
    encrypt_s = (time.perf_counter() - start) / n_sites
    start = time.perf_counter()
    aggregate = add_ciphertexts(public, ciphertexts)
    add_s = time.perf_counter() - start
    start = time.perf_counter()
    released = holder.decrypt_ring_sum(aggregate, dim)
    decrypt_s = time.perf_counter() - start
    start = time.perf_counter()
    truth = masked.sum(axis=0)  # wraps mod 2^64
    plain_s = time.perf_counter() - start
    mismatches = float(np.count_nonzero(released != truth))
    size = ciphertexts[0].nbytes
    return Row(
        "ring 2^64, 16-bit limbs",
        n_sites,
        dim,
        len(ciphertexts[0].chunks),
        mismatches,
        mismatches,
        mismatches,
        size,
        8 * dim,
        size / (8 * dim),
        1e3 * encrypt_s,
        1e3 * add_s,
        1e3 * decrypt_s,
        1e3 * plain_s,
    )


@dataclass(frozen=True)
class StackRow:
    """One round of a whole protection layer."""

    layer: str
    n_sites: int
    dim: int
    bytes_per_site: int
    seconds_round: float
    cpu_seconds_round: float
    seconds_sites: float
    seconds_server: float
    seconds_key_holder: float
    max_abs_error: float


STACK_LAYERS = {"secagg": SecAggSum, "ckks": CkksSum, "secagg,ckks": SecAggCkksSum}


def run_stack(name: str, n_sites: int, dim: int, bound: float, seed: int,
              repeats: int = 3) -> StackRow:
    """Fastest of ``repeats`` in-process rounds of layer ``name`` over ``n_sites`` vectors."""
    rng = np.random.default_rng(seed)
    vectors = {f"site-{i:03d}": rng.uniform(-bound, bound, dim) for i in range(n_sites)}
    best = None
    for _ in range(repeats):
        layer = STACK_LAYERS[name](bound=bound)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = layer.aggregate(vectors, round_id=1, purpose="benchmark")
        timing = (time.perf_counter() - start, time.process_time() - cpu_start)
        if best is None or timing[0] < best[0][0]:
            best = (timing, result)
    (seconds, cpu_seconds), result = best
    exact = np.array([math.fsum(v[j] for v in vectors.values()) for j in range(dim)])
    details = result.details
    return StackRow(
        name,
        n_sites,
        dim,
        int(round(float(np.mean(list(result.bytes_sent_per_site.values()))))),
        seconds,
        cpu_seconds,
        float(details.get("seconds_site", math.nan)),
        float(details.get("seconds_server", math.nan)),
        float(details.get("seconds_key_holder", math.nan)),
        float(np.max(np.abs(result.total - exact))),
    )


def _stack_markdown(rows: list[StackRow], bound: float, load: float) -> str:
    lines = [
        "# Protection layers side by side: secagg, ckks, secagg,ckks",
        "",
        f"One in-process round (sites run one after another on one machine: "
        f"{platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} when the run "
        f"started, Python {platform.python_version()}; on a loaded machine wall times are "
        "inflated and the CPU column is the one to compare), values uniform in "
        f"[-{bound:g}, {bound:g}] with that declared bound, CKKS N = 8192. `bytes/site` is "
        "everything a site sends; seconds are the fastest of three rounds: wall time of the "
        "whole round (key generation excluded) and its process CPU time, then the sites' "
        "share of the wall time summed over sites, the server's (including the key holder's "
        "decryption) and the key holder's. Error is against the exact sum (the fixed-point "
        "quantisation, the same for all three layers).",
        "",
        "| layer | sites | dim | bytes/site | round s | round CPU s | sites s | server s | "
        "key holder s | max abs err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{v:.3f}" if not math.isnan(v) else "–"
                 for v in (r.seconds_sites, r.seconds_server, r.seconds_key_holder)]
        lines.append(
            f"| {r.layer} | {r.n_sites} | {r.dim} | {r.bytes_per_site} | {r.seconds_round:.2f} | "
            f"{r.cpu_seconds_round:.2f} | {' | '.join(cells)} | {r.max_abs_error:.1e} |"
        )
    lines += [
        "",
        "`secagg,ckks` sends what `secagg` sends plus one CKKS ciphertext of the masked words "
        "(four 16-bit limbs per 64-bit word, 4096 slots per ciphertext) per site; the time it "
        "adds over `secagg` is the sites' encryptions and the coordinator's parsing and "
        "adding of ciphertexts.",
    ]
    return "\n".join(lines) + "\n"


def _markdown(rows: list[Row], params: CkksParams, context_bytes: int) -> str:
    lines = [
        "# CKKS benchmark",
        "",
        f"Parameters: N = {params.poly_modulus_degree}, coefficient primes "
        f"{list(params.coeff_mod_bit_sizes)} bits (total {sum(params.coeff_mod_bit_sizes)} "
        f"<= 218, HE standard 128-bit), scale 2^{params.scale_bits}, release grid "
        f"2^-{params.release_bits}, value window 2^{int(np.log2(params.max_abs_value))}; "
        f"pre-scaling target 2^20. Public context: "
        f"{context_bytes} bytes. Machine: {platform.machine()}, {platform.python_version()}.",
        "",
        "Errors are of the released sum against the float64 plaintext sum; "
        "`err/B` is relative to the public per-coordinate bound B_j; `rel` is relative to the "
        "sum where |sum| > 0.1 B_j. For the ring rows the error columns count wrong elements "
        "(must be 0).",
        "",
        "| mode | sites | dim | chunks | max abs err | max err/B | max rel | bytes/site | "
        "x plaintext | enc ms/site | add ms | dec ms | plain sum ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.mode} | {r.n_sites} | {r.dim} | {r.chunks} | {r.max_abs_error:.2e} | "
            f"{r.max_error_over_bound:.2e} | {r.max_rel_error:.2e} | {r.bytes_per_site} | "
            f"{r.byte_overhead:.0f} | {r.encrypt_ms_per_site:.1f} | {r.add_ms_total:.1f} | "
            f"{r.decrypt_ms:.1f} | {r.plaintext_sum_ms:.3f} |"
        )
    lines += [
        "",
        "Notes. Sites quantise each value to the release grid 2^-r (r = s - 24 = "
        f"{params.release_bits}) before encrypting, and the key holder rounds the decryption "
        "back to the grid, so the released sum is exactly the sum of the quantised values "
        "(independent of the CKKS noise, which never leaves the key holder: Li-Micciancio "
        "2021). The raw CKKS slot noise, measured separately at scale 2^40, is about 3e-8 "
        "(10 sites) to 9e-8 (100 sites) in encoded units, about 2^-23, far below the "
        "quarter-step refusal threshold 2^-18. The error against the float64 sum is "
        "therefore the quantisation, at most n 2^-(r+1) in encoded units; pre-scaling maps "
        "|x_j| <= B_j to at most 2^20, giving at most n B_j 2^-36 (`max err/B`). Raw "
        "(un-scaled) small coordinates lose most of their digits to the grid: use the "
        "pre-scaling. A ciphertext holds 4096 slots in about 331 kB (SEAL-compressed), so "
        "the byte overhead falls with vector length; 64-bit ring elements as 16-bit limbs "
        "take four slots each.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run all configurations and write CSV and Markdown results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 1000, 10000])
    parser.add_argument("--stack-only", action="store_true",
                        help="only the layers-side-by-side table (ckks_stack.{csv,md})")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bound, load = 1e3, os.getloadavg()[0]
    stack = [run_stack(name, n_sites, 64, bound, seed=n_sites)
             for n_sites in (10, 100) for name in STACK_LAYERS]
    _write_csv(args.out / "ckks_stack.csv", stack)
    stack_markdown = _stack_markdown(stack, bound, load)
    (args.out / "ckks_stack.md").write_text(stack_markdown)
    print(stack_markdown)
    if args.stack_only:
        return
    params = CkksParams()
    holder = CkksKeyHolder.generate(params)
    rows = []
    for n_sites in (10, 100):
        for dim in args.dims:
            for prescale in (True, False):
                rows.append(run_real(holder, n_sites, dim, prescale, seed=n_sites + dim))
        rows.append(run_ring(holder, n_sites, args.dims[0], seed=n_sites))
    _write_csv(args.out / "ckks.csv", rows)
    markdown = _markdown(rows, params, len(holder.public_context()))
    (args.out / "ckks.md").write_text(markdown)
    print(markdown)


def _write_csv(path: Path, rows: list[Row] | list[StackRow]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


if __name__ == "__main__":
    main()
