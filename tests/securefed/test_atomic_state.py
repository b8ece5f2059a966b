"""Attack 7: state on disk is checked and changed in one step, secrets are born 0600.

* Two runs (processes, and threads) spending from one ``--privacy-ledger``
  folder: the ledger locks and re-reads before every charge, so together they
  never spend more than the budget and no charge is lost.
* The CKKS key holder's once-per-round record: of two concurrent requests for
  one round exactly one is recorded (200 rounds, two processes racing).
* Every private key file is created 0600 by ``os.open(..., O_EXCL, 0o600)``
  and an existing file (of any mode) is never overwritten.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from protocols.errors import PrivacyBudgetExceeded
from securefed.privacy import DPOptions, DpQuery, PrivacyGuard

RELEASES = 40  # each run tries this many releases of a twentieth of the budget


def _spend_until_refused(ledger_dir: str, start, results) -> None:
    try:
        options = DPOptions(epsilon=1.0, clip=1.0, ledger_dir=Path(ledger_dir))
        guard = PrivacyGuard.create(options, ["A", "B"], 1)  # both runs pass the plan check
        start.wait(timeout=30)
        spent = 0
        for round_id in range(1, RELEASES + 1):
            try:
                guard.apply({"A": np.zeros(2), "B": np.zeros(2)},
                            DpQuery("q", 1.0, options.run_rho / 20), round_id)
            except PrivacyBudgetExceeded:
                continue
            spent += 1
        results.put(spent)
    except Exception as exc:  # reported, so that the test fails instead of waiting
        results.put(repr(exc))


def _ledger_total(ledger_dir: Path, site: str) -> tuple[float, int]:
    stored = json.loads((ledger_dir / f"site-{site}.privacy.json").read_text())
    return stored["epsilon_spent"], len(stored["releases"])


def test_two_processes_on_one_ledger_never_spend_more_than_the_budget(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(2), ctx.Queue()
    runs = [ctx.Process(target=_spend_until_refused, args=(str(tmp_path), start, results))
            for _ in range(2)]
    for run in runs:
        run.start()
    spent = [results.get(timeout=60) for _ in runs]
    for run in runs:
        run.join(timeout=60)
    # 20 twentieths fit the budget: the race doubled none and lost no charge
    assert all(isinstance(n, int) for n in spent) and sum(spent) == 20, spent
    for site in "AB":
        epsilon, count = _ledger_total(tmp_path, site)
        assert count == 20 and epsilon <= 1.0 + 1e-9


def test_two_threads_on_one_ledger_never_spend_more_than_the_budget(tmp_path):
    import queue

    start, results = threading.Barrier(2), queue.Queue()
    runs = [threading.Thread(target=_spend_until_refused, args=(str(tmp_path), start, results))
            for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=60)
    spent = [results.get(timeout=5) for _ in runs]
    assert all(isinstance(n, int) for n in spent) and sum(spent) == 20, spent
    assert _ledger_total(tmp_path, "A")[1] == 20


def _burn_all(ledger: str, start, results) -> None:
    from securefed.transport.flower_ckks import DecryptionRefused, _burn_round

    won: list[int] = []
    try:
        start.wait(timeout=30)
        for k in range(200):
            try:
                _burn_round(Path(ledger), f"fingerprint:round-{k}")
            except DecryptionRefused:
                continue
            won.append(k)
    finally:
        results.put(won)


def test_the_key_holder_records_each_round_once_under_concurrent_requests(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(2), ctx.Queue()
    ledger = tmp_path / "ckks.rounds"
    runs = [ctx.Process(target=_burn_all, args=(str(ledger), start, results)) for _ in range(2)]
    for run in runs:
        run.start()
    won = [results.get(timeout=60) for _ in runs]
    for run in runs:
        run.join(timeout=60)
    assert sorted(won[0] + won[1]) == list(range(200))  # each of 200 pairs: exactly one
    assert len(ledger.read_text().split()) == 200
    assert stat.S_IMODE(ledger.stat().st_mode) == 0o600


# ------------------------------------------------------------------ secret files
def _writers(folder: Path):
    from protocols.ckks import CkksKeyHolder
    from securefed.keys import Identity
    from securefed.transport.pki import write_ca_and_server, write_node_key

    holder = CkksKeyHolder.generate()
    identity = Identity.generate("A")
    return {
        "identity key": (folder / "A.key", lambda: identity.save_private_key(folder / "A.key")),
        "ckks secret": (folder / "ckks.ctx", lambda: holder.save(folder / "ckks.ctx")),
        "tls key": (folder / "superlink.key",
                    lambda: write_ca_and_server(folder, ["127.0.0.1"])),
        "node key": (folder / "A.node", lambda: write_node_key(folder, "A")),
    }


@pytest.mark.parametrize("kind", ["identity key", "ckks secret", "tls key", "node key"])
def test_every_private_key_is_created_0600_even_under_a_permissive_umask(tmp_path, kind):
    path, write = _writers(tmp_path)[kind]
    old = os.umask(0)  # without O_CREAT's mode the file would be 0666
    try:
        write()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("kind", ["identity key", "ckks secret", "tls key", "node key"])
def test_an_existing_file_is_never_overwritten_with_a_secret(tmp_path, kind):
    path, write = _writers(tmp_path)[kind]
    path.write_bytes(b"prepared by someone else")
    os.chmod(path, 0o644)
    with pytest.raises(Exception) as refused:
        write()
    assert "exist" in str(refused.value).lower() or isinstance(refused.value, FileExistsError)
    assert path.read_bytes() == b"prepared by someone else"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_symbolic_link_is_not_followed(tmp_path):
    from protocols.secret_files import create_secret_file

    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    os.chmod(target, 0o644)
    (tmp_path / "key").symlink_to(target)
    with pytest.raises(FileExistsError):
        create_secret_file(tmp_path / "key", b"secret")
    assert target.read_bytes() == b""


def test_no_secret_writer_chmods_after_writing():
    root = Path(__file__).resolve().parents[2]
    for module in ("securefed/transport/pki.py", "securefed/keys.py", "protocols/ckks.py",
                   "protocols/secret_files.py", "securefed/transport/ckks_keys.py"):
        text = (root / module).read_text()
        assert "chmod(" not in text.replace("run: chmod", ""), module
