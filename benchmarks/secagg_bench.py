"""Per-round cost of secure aggregation (SecAgg vs SecAgg+), in process.

Measures, for a vector of 2,550 values and n = 10, 100, 500, 1000 sites:
site compute (total and per site), server compute, bytes sent per site
against the raw payload (8 bytes per ring word + two public keys + two
33-byte shares per holder), for the complete graph and for SecAgg+ with the
recommended degree k; and, in the same run, raw ChaCha20 keystream
throughput against mask-generation throughput (the PRG is AES-256-CTR,
computed through the AES-GCM AEAD object; see ``protocols.primitives.prg_words``).

Usage::

    python benchmarks/secagg_bench.py [--sizes 10 100 500 1000] [--length 2550]
                                      [--complete-max 500] [--budget 600]

Results go to ``benchmarks/results/secagg.csv`` and ``secagg.md``. This is a
benchmark, not a test: timings depend on the machine (2 cores here, all work
single-threaded because the in-process driver runs sites one after another).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from protocols.graph import recommended_neighbours
from protocols.primitives import chacha20_keystream, prg_words
from protocols.secagg import DropPhase, secure_sum
from protocols.secagg_config import SecAggConfig

RESULTS = Path(__file__).resolve().parent / "results"
SESSION = b"secagg-bench"
BOUND = 100.0  # |x| ≤ 100: one 64-bit word suffices for n ≤ 1000 at 1e-10 precision
SHARE_BYTES, KEY_BYTES = 33, 32


def keystream_throughput(length: int, repeats: int = 7, seconds: float = 0.3) -> dict[str, float]:
    """Bytes per second: raw ChaCha20 stream, per-key keystream, and mask generation.

    The three are measured interleaved, ``repeats`` times each, and the best
    rate of each is kept, so background load on a shared machine affects all
    three alike.
    """
    n_bytes = 8 * length
    zeros = bytes(n_bytes)
    encryptor = Cipher(algorithms.ChaCha20(os.urandom(32), bytes(16)), mode=None).encryptor()
    seeds = [os.urandom(32) for _ in range(256)]
    accumulator = np.zeros(length, dtype=np.uint64)

    def raw(i: int) -> None:
        encryptor.update(zeros)

    def per_key(i: int) -> None:
        chacha20_keystream(seeds[i & 255], bytes(16), n_bytes)

    def mask(i: int) -> None:
        accumulator.__iadd__(prg_words(seeds[i & 255], length))

    def rate(step) -> float:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for i in range(50):
                step(i)
            count += 50
        return count * n_bytes / (time.perf_counter() - start)

    best = {"raw_chacha20": 0.0, "keystream_per_seed": 0.0, "mask_generation": 0.0}
    for _ in range(repeats):
        for name, step in zip(best, (raw, per_key, mask), strict=True):
            best[name] = max(best[name], rate(step))
    return best


def run_round(n: int, length: int, neighbours: int | None, drop: float) -> dict[str, object]:
    rng = np.random.default_rng(n)
    vectors = {u: rng.uniform(-BOUND, BOUND, length) for u in range(n)}
    dropped = list(range(0, n, int(1 / drop))) if drop else []
    config = SecAggConfig(SESSION, 1, tuple(range(n)), length, BOUND, neighbours=neighbours)
    start = time.perf_counter()
    result = secure_sum(
        vectors,
        bounds=BOUND,
        session_id=SESSION,
        round_id=1,
        neighbours=neighbours,
        drop_sites=dropped,
        drop_phase=DropPhase.AFTER_KEY_SHARING if dropped else None,
    )
    wall = time.perf_counter() - start
    exact = np.sum([vectors[u] for u in result.contributors], axis=0)
    sent = np.array([result.bytes_sent_per_site[u] for u in result.contributors])
    holders = config.holder_count
    raw = 8 * config.encoder.n_words + 2 * KEY_BYTES + 2 * SHARE_BYTES * (holders - 1)
    return {
        "sites": n,
        "graph": "complete" if neighbours is None else f"secagg+ k={neighbours}",
        "holders": holders,
        "threshold": config.t,
        "words": config.encoder.words,
        "length": length,
        "dropped": len(dropped),
        "wall_s": round(wall, 3),
        "site_s_total": round(result.seconds_site, 3),
        "site_ms_per_site": round(1000 * result.seconds_site / n, 2),
        "server_s": round(result.seconds_server, 3),
        "bytes_per_site_mean": int(sent.mean()),
        "bytes_per_site_max": int(sent.max()),
        "raw_bytes_per_site": raw,
        "bytes_ratio": round(float(sent.mean()) / raw, 3),
        "max_abs_error": float(np.max(np.abs(result.total - exact))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500, 1000])
    parser.add_argument("--length", type=int, default=2550)
    parser.add_argument(
        "--complete-max",
        type=int,
        default=500,
        help="largest n run with the complete graph (O(n^2) work)",
    )
    parser.add_argument("--budget", type=float, default=600.0, help="seconds for all rounds")
    args = parser.parse_args()

    began = time.perf_counter()
    throughput = {n: keystream_throughput(n) for n in sorted({args.length, 10_000, 50_000})}
    rows, skipped = [], []
    plan = []
    for n in args.sizes:
        k = recommended_neighbours(n)
        if n <= args.complete_max:
            plan.append((n, None, 0.0))
        else:
            skipped.append(f"complete graph at n = {n} (above --complete-max {args.complete_max})")
        if k < n - 1:
            plan.append((n, k, 0.0))
    largest = max(args.sizes)
    k_largest = recommended_neighbours(largest)
    if k_largest < largest - 1:
        plan.append((largest, k_largest, 0.05))
    for n, k, drop in plan:
        if time.perf_counter() - began > args.budget:
            skipped.append(f"n = {n}, k = {k}, dropout {drop:.0%} (time budget exhausted)")
            continue
        row = run_round(n, args.length, k, drop)
        rows.append(row)
        print(row, flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "secagg.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_markdown(rows, throughput, skipped, args)


def write_markdown(rows, throughput, skipped, args) -> None:
    lines = [
        "# Secure aggregation benchmark",
        "",
        "Generated by `benchmarks/secagg_bench.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}. "
        f"Vector length {args.length}, bound |x| ≤ {BOUND:g}; one in-process round each "
        "(all sites run sequentially in one process, so `wall_s` ≈ site + server time).",
        "",
        "## Per-round cost",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(v) for v in row.values()) + " |")
    lines += [
        "",
        "`raw_bytes_per_site` = 8 × ring words + two 32-byte public keys + two 33-byte "
        "shares per other holder; `bytes_ratio` = bytes actually serialised / raw.",
        "",
        "## Mask generation vs raw ChaCha20 (same run)",
        "",
        "raw = one ChaCha20 context streaming fixed-size updates (no key setup); "
        "per-key = `chacha20_keystream` with a fresh key per call (ChaCha20 with the key "
        "setup one mask needs); mask = `acc += prg_words(seed, length)`, a fresh seed per "
        "call (AES-256-CTR keystream via the AES-GCM AEAD object, whose key setup costs "
        "≈ 2 µs against ≈ 9 µs for a `Cipher` context). Best of 7 interleaved 0.3 s runs "
        "each (the machine is shared, so single runs are noisy).",
        "",
        "| values per mask | raw GB/s | per-key GB/s | mask GB/s | mask / raw | mask / per-key |",
        "|---|---|---|---|---|---|",
    ]
    for length, t in throughput.items():
        lines.append(
            f"| {length} | {t['raw_chacha20'] / 1e9:.2f} | {t['keystream_per_seed'] / 1e9:.2f} "
            f"| {t['mask_generation'] / 1e9:.2f} "
            f"| {t['mask_generation'] / t['raw_chacha20']:.0%} "
            f"| {t['mask_generation'] / t['keystream_per_seed']:.0%} |"
        )
    lines += ["", "## Goals", ""] + goal_lines(rows, throughput, args.length)
    if skipped:
        lines += ["", "## Not run", ""] + [f"- {s}" for s in skipped]
    (RESULTS / "secagg.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def goal_lines(rows, throughput, length: int) -> list[str]:
    """Verdicts on the three stated goals, computed from this run."""
    plus_1000 = [r for r in rows if r["sites"] == 1000 and r["graph"] != "complete"]
    worst_ratio = max(r["bytes_ratio"] for r in rows)
    t = throughput[length]
    mask_share = t["mask_generation"] / t["raw_chacha20"]
    lines = []
    if plus_1000:
        wall = max(r["wall_s"] for r in plus_1000)
        verdict = "met" if wall < 30 else "NOT met"
        lines.append(f"- 1000-site SecAgg+ round < 30 s: {verdict} (slowest {wall:.1f} s).")
    verdict = "met" if worst_ratio <= 2 else "NOT met"
    lines.append(f"- bytes per site within 2× of raw: {verdict} (worst ratio {worst_ratio:.2f}).")
    verdict = "met" if mask_share >= 0.5 else "NOT met"
    lines.append(
        f"- mask generation ≥ 50% of raw ChaCha20 at {length} values: {verdict} "
        f"({mask_share:.0%}). One mask needs a fresh key; with a raw ChaCha20 `Cipher` "
        "context its setup (≈ 9 µs) costs about as much as 20 KB of keystream (per-key "
        "column), so masks use AES-256-CTR through the AEAD object instead (the issue "
        "allows ChaCha20 or AES-CTR), whose setup is ≈ 2 µs and whose keystream runs on "
        "AES-NI."
    )
    return lines


if __name__ == "__main__":
    main()
