"""Refusals are safe to send: a code and a fixed message, never exception text or data.

Over the in-memory grid with the real ClientApp handler, a site whose
computation raises an exception carrying a secret (here: the site's own
identity key, as the issue's crafted ``open`` call returned it) answers with
a refusal code only; the coordinator's error holds the code's fixed message;
the site's audit log records the code (and verifies with the run's log).
"""

from __future__ import annotations

import functools
import json

import pytest
import test_flower_engine as loopback
from test_flower_engine import SITES, engine_for

from protocols.errors import (
    AbortError,
    EncodingError,
    InvalidMessage,
    PrivacyBudgetExceeded,
    ProtocolError,
)
from protocols.stack import SecAggSum
from securefed.keys import Identity
from securefed.site import Site
from securefed.transport.calls import record_call
from securefed.transport.flower_server import SiteRefused
from securefed.transport.refusal import Refusal, refusal_for
from securefed.transport.site_audit import site_log_paths

world = loopback.world

EXCEPTIONS = {  # exception class: the code it is answered with
    KeyError: Refusal.BAD_REQUEST, ValueError: Refusal.BAD_REQUEST,
    TypeError: Refusal.BAD_REQUEST, OSError: Refusal.SITE_SETUP,
    RuntimeError: Refusal.INTERNAL, InvalidMessage: Refusal.PROTOCOL,
    AbortError: Refusal.PROTOCOL, EncodingError: Refusal.BOUND,
    PrivacyBudgetExceeded: Refusal.BUDGET,
}


def _leaky(world, monkeypatch, exc_type):
    """B's statistic raises ``exc_type`` whose text is B's private key; that key's PEM."""
    config = world.grid.contexts[1001].node_config
    secret = Identity.load(config["identity-key"], "B").export_private_key_pem().decode()

    original = Site.design_summary_vector

    @functools.wraps(original)  # the same signature: the call is recorded as usual
    def leak(site, *args, **kwargs):
        if site.name == "B":
            raise exc_type(f"key of the site: {secret}")
        return original(site, *args, **kwargs)

    monkeypatch.setattr(Site, "design_summary_vector", leak)
    return secret


@pytest.mark.parametrize("exc_type", list(EXCEPTIONS), ids=lambda e: e.__name__)
def test_an_exception_carrying_a_secret_never_reaches_the_reply(world, monkeypatch, exc_type):
    secret = _leaky(world, monkeypatch, exc_type)
    replies = []
    push = world.grid.push_messages

    def keep(messages):
        ids = push(messages)
        replies.extend(world.grid._replies[i] for i in ids if i in world.grid._replies)
        return ids

    world.grid.push_messages = keep
    with pytest.raises(ProtocolError) as refused:  # SiteRefused, or SiteBudgetExceeded
        engine_for(world, SecAggSum()).run_round(
            1, "summary", record_call(lambda s: s.design_summary_vector(), SITES), SITES)
    code = EXCEPTIONS[exc_type]
    assert str(refused.value) == f"B: {code.text}"
    record = dict(next(r.content["securefed"] for r in replies
                       if "error" in r.content["securefed"]))
    assert record == {"error": code.text, "refusal": code.value}
    for line in secret.splitlines()[1:-1]:  # no line of the key, anywhere in any reply
        assert all(line not in str(dict(r.content["securefed"])) for r in replies)


def test_an_exception_names_its_own_code_and_unknown_ones_are_internal():
    class PolicyRefusal(Exception):
        refusal = Refusal.DP_TERMS

    assert refusal_for(PolicyRefusal("x")) is Refusal.DP_TERMS
    assert refusal_for(KeyboardInterrupt()) is Refusal.INTERNAL
    assert len({code.message for code in Refusal}) == len(Refusal)  # one sentence per code


def test_the_refusal_code_is_logged_in_the_sites_audit_log(world, monkeypatch, tmp_path):
    secret = _leaky(world, monkeypatch, ValueError)
    for context in world.grid.contexts.values():
        folder = tmp_path / "audit" / context.node_config["site-name"]
        folder.mkdir(parents=True)
        context.node_config["audit-dir"] = str(folder)
    audit = {"run_id": "ab12", "layers": [{"name": "secagg"}]}
    with pytest.raises(SiteRefused):
        engine_for(world, SecAggSum()).run_round(
            1, "summary", record_call(lambda s: s.design_summary_vector(), SITES), SITES,
            audit=audit)
    log, _ = site_log_paths(tmp_path / "audit" / "B", "ab12", "B")
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    refusals = [e["payload"] for e in entries if e["kind"] == "REFUSAL"]
    assert refusals == [{"run_id": "ab12", "round": 1, "site": "B", "reason": "SITE_REFUSAL",
                         "detail": "bad-request"}]
    assert secret.splitlines()[1] not in log.read_text()


@pytest.mark.parametrize("foreign", [False, True])
def test_a_site_log_with_its_refusal_verifies_and_a_foreign_one_does_not(tmp_path, foreign):
    from securefed.audit import verify_log
    from securefed.audit_log import EventKind
    from securefed.audit_trail import AuditTrail, trail_paths

    path = tmp_path / "run.jsonl"
    trail = AuditTrail.start(path, site_names=["a", "b", "c"], model="m", config={},
                             protection={"name": "secagg"})
    site = trail._sites["a"]
    if foreign:  # a's log claiming b's refusal
        site._log.append(EventKind.REFUSAL, site._identity, {
            "run_id": trail.run_id, "round": 1, "site": "b", "reason": "SITE_REFUSAL",
            "detail": "dp-refused"})
    else:
        site.record_refusal(1, "dp-refused")
    trail.finish({"ok": 1}, "test", ["a", "b", "c"])
    report = verify_log(path, trail._registry,
                        site_logs=[trail_paths(path, n)[0] for n in "abc"])
    assert report.ok is not foreign, report.summary()
