"""What a site says when it refuses: a code and a fixed sentence, nothing else.

A site that cannot or will not serve a request answers with a
:class:`Refusal`: a short code and a message fixed in this file. Neither the
exception's text nor anything from the request, the site's files or its
data ever goes into the reply, because exception text can carry anything
(a path, a value, a key read by a crafted call). The operator of the site
sees the detail in the site's own log; the coordinator sees only the code.

:func:`refusal_for` picks the code from the exception's class (most specific
first); an exception may name its own code in a ``refusal`` attribute (a
:class:`Refusal`), which wins. :func:`refusal_reply` is the reply record and
:func:`log_refusal` writes the code in the site's audit log when the request
belongs to an audited run.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["Refusal", "refusal_for", "refusal_reply", "log_refusal"]

_LOG = logging.getLogger("securefed.site")
_LOG.addHandler(logging.NullHandler())  # shown where the site configures logging only


class Refusal(enum.Enum):
    """Why a site refused, as a code with a fixed message."""

    BUDGET = "budget-exceeded"
    DP_TERMS = "dp-refused"
    UNTRUSTED_CONTEXT = "untrusted-context"
    UNTRUSTED_REGISTRY = "untrusted-registry"
    KEY_HOLDER = "key-holder-refused"
    BOUND = "above-bound"
    REPLAY = "replay"
    PROTOCOL = "protocol-check-failed"
    BAD_REQUEST = "bad-request"
    SITE_SETUP = "site-setup"
    CANNOT_COMPUTE = "cannot-compute"
    POLICY = "policy-refused"  # the reply's ``refusal`` names the policy's own code
    INTERNAL = "internal-error"

    @property
    def message(self) -> str:
        """The fixed sentence sent with the code."""
        return _MESSAGES[self]

    @property
    def text(self) -> str:
        """``code: message``, as it travels in a reply's ``error`` field."""
        return f"{self.value}: {self.message}"


_MESSAGES = {
    Refusal.BUDGET: "the site's privacy budget does not allow this release; nothing was "
                    "released",
    Refusal.DP_TERMS: "the site does not accept this round's differential-privacy terms",
    Refusal.UNTRUSTED_CONTEXT: "the CKKS public context is not signed by the key holder this "
                               "site trusts",
    Refusal.UNTRUSTED_REGISTRY: "the run's registry is not this site's own pinned copy of the "
                                "consortium registry",
    Refusal.KEY_HOLDER: "the CKKS key holder refused: it holds no data and decrypts at most "
                        "one aggregate with enough valid receipts per round",
    Refusal.BOUND: "a value the site would release is above the round's declared bound or "
                   "not finite: standardise the covariates or raise the bound",
    Refusal.REPLAY: "the request repeats a release or a message the site has already answered",
    Refusal.PROTOCOL: "the request failed the protection protocol's checks at the site",
    Refusal.BAD_REQUEST: "the site does not serve this request (unknown call, stage or round, "
                         "a malformed field, or a roster or identity it cannot trust)",
    Refusal.SITE_SETUP: "the site cannot serve this request with its own files and "
                        "configuration; its operator has the details",
    Refusal.CANNOT_COMPUTE: "the site's rows cannot give this statistic (too few rows, a "
                            "constant or collinear column, or a local fit that did not "
                            "converge); its operator has the details",
    Refusal.POLICY: "the site's own policy does not allow this round",
    Refusal.INTERNAL: "the site could not serve this request; its operator has the details",
}

# Exception class name → code, looked up along the exception's MRO. Names, not
# classes, so the site need not import TenSEAL or Flower to refuse.
_BY_CLASS = {
    "SiteBudgetExceeded": Refusal.BUDGET,
    "PrivacyBudgetExceeded": Refusal.BUDGET,
    "BudgetExceededError": Refusal.BUDGET,
    "DpRefused": Refusal.DP_TERMS,
    "UntrustedContext": Refusal.UNTRUSTED_CONTEXT,
    "DecryptionRefused": Refusal.KEY_HOLDER,
    "RegistryMismatch": Refusal.UNTRUSTED_REGISTRY,
    "EncodingError": Refusal.BOUND,
    "ReplayError": Refusal.REPLAY,
    "ProtocolError": Refusal.PROTOCOL,
    "RemoteCallError": Refusal.BAD_REQUEST,
    "CodecError": Refusal.BAD_REQUEST,
    "InputError": Refusal.SITE_SETUP,
    "FormulaError": Refusal.CANNOT_COMPUTE,
    "SiteDataError": Refusal.CANNOT_COMPUTE,
    "MAPConvergenceError": Refusal.CANNOT_COMPUTE,
    "LinAlgError": Refusal.CANNOT_COMPUTE,
    "OSError": Refusal.SITE_SETUP,
    "KeyError": Refusal.BAD_REQUEST,
    "ValueError": Refusal.BAD_REQUEST,
    "TypeError": Refusal.BAD_REQUEST,
}


def refusal_for(exc: BaseException) -> Refusal:
    """The code for ``exc``: its own ``refusal``, else the first class on its MRO we know."""
    own = getattr(exc, "refusal", None)
    if isinstance(own, Refusal):
        return own
    for cls in type(exc).__mro__:
        if cls.__name__ in _BY_CLASS:
            return _BY_CLASS[cls.__name__]
    return Refusal.INTERNAL


def refusal_reply(exc: BaseException) -> tuple[Refusal, dict[str, str]]:
    """The code and the reply record for a request that raised ``exc``.

    The site's own log gets the code and the exception's class (the operator
    reads the detail there); the reply gets only the code and its message.
    """
    from securefed.policy.refusal import PolicyRefused

    if isinstance(exc, PolicyRefused):  # a fixed text of the site's policy (policy/refusal.py)
        _LOG.warning("refused a request under the site's policy: %s", exc.code)
        return Refusal.POLICY, {"error": str(exc), "refusal": exc.code}
    code = refusal_for(exc)
    _LOG.warning("refused a request: %s (%s)", code.value, type(exc).__name__)
    return code, {"error": code.text, "refusal": code.value}


def log_refusal(code: Refusal, request: Mapping[str, Any], state: Mapping[str, Any],
                node_config: Mapping[str, Any]) -> None:
    """Log the refusal in the site's audit log, if the request is part of an audited run.

    The run comes from the request's ``audit`` field (``open``) or from the
    round the site has open; the site needs ``audit-dir`` in its node config.
    Never raises: a refusal is answered whether or not it could be logged.
    """
    try:
        audit_text = request.get("audit") or state.get("audit")
        round_text = request.get("round") or state.get("round")
        if not audit_text or not {"audit-dir", "audit-trail"} & set(node_config):
            return
        run_id = str(json.loads(str(audit_text))["run_id"])
        round_id = int(json.loads(str(round_text))["round_id"]) if round_text else 0
        from securefed.keys import Identity
        from securefed.transport.site_audit import audit_place, log_site_refusal

        identity = Identity.load(str(node_config["identity-key"]), str(node_config["site-name"]))
        log_site_refusal(audit_place(node_config), identity, run_id, round_id, code.value)
    except Exception as exc:  # noqa: BLE001 - the reply does not depend on the log
        _LOG.warning("could not log refusal %s in the audit log (%s)", code.value,
                     type(exc).__name__)
