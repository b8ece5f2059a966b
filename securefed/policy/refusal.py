"""Refusal codes a site sends instead of a vector: a code and a fixed message, never data.

A :class:`PolicyRefused` carries one :class:`Refusal`; its text is the code and
the code's fixed message, so it is safe to send to the coordinator and to log:
it never contains exception text, a site's values or the coordinator's
parameters. (The lead reconciles this enum with the transport's refusal codes.)
"""

from __future__ import annotations

import enum

__all__ = ["Refusal", "PolicyRefused"]


class Refusal(enum.Enum):
    """Why a site refused a round; the value is the code that travels."""

    POLICY_UNREADABLE = "policy-unreadable"
    MODEL_NOT_APPROVED = "model-not-approved"
    STUDY_NOT_PINNED = "study-not-pinned"
    LAYER_BELOW_FLOOR = "layer-below-floor"
    DP_REQUIRED = "dp-required"
    EPSILON_ABOVE_CAP = "epsilon-above-cap"
    NOT_IN_ROSTER = "not-in-roster"
    ROSTER_UNKNOWN = "roster-unknown"
    ROSTER_NOT_A_SITE = "roster-not-a-site"
    ROSTER_TOO_SMALL = "roster-too-small"
    THRESHOLD_BELOW_FLOOR = "threshold-below-floor"
    CONTRIBUTORS_BELOW_FLOOR = "contributors-below-floor"
    THETA_OUT_OF_BOUNDS = "theta-out-of-bounds"
    TOO_MANY_ROUNDS = "too-many-rounds"
    TOO_MANY_BINS = "too-many-bins"
    SMALL_CELL = "small-cell"
    TOO_FEW_RECORDS = "too-few-records"
    DIFFERENCING = "differencing"

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Refusal.POLICY_UNREADABLE: "this site's policy file cannot be read; the site serves nothing",
    Refusal.MODEL_NOT_APPROVED: "the model is not approved by this site's policy",
    Refusal.STUDY_NOT_PINNED: "the round does not carry the study file this site's policy "
                              "pins",
    Refusal.LAYER_BELOW_FLOOR: "the round's protection is below this site's required layers",
    Refusal.DP_REQUIRED: "this site releases only under differential privacy",
    Refusal.EPSILON_ABOVE_CAP: "the release spends more epsilon than this site allows per "
                               "release",
    Refusal.NOT_IN_ROSTER: "this site is not in the round's roster",
    Refusal.ROSTER_UNKNOWN: "the roster names a party not in this site's registry",
    Refusal.ROSTER_NOT_A_SITE: "the roster names the coordinator or the key holder as a site",
    Refusal.ROSTER_TOO_SMALL: "the roster has fewer sites than this site's policy requires",
    Refusal.THRESHOLD_BELOW_FLOOR: "the secret-sharing threshold is below this site's floor",
    Refusal.CONTRIBUTORS_BELOW_FLOOR: "the minimum number of contributors is below this "
                                      "site's floor",
    Refusal.THETA_OUT_OF_BOUNDS: "the parameters are outside this site's public bounds",
    Refusal.TOO_MANY_ROUNDS: "this model has had as many releases as this site's policy allows",
    Refusal.TOO_MANY_BINS: "the histogram has more bins than this site's policy allows",
    Refusal.SMALL_CELL: "a released cell would count fewer records than this site's minimum",
    Refusal.TOO_FEW_RECORDS: "fewer records are behind the release than this site's minimum",
    Refusal.DIFFERENCING: "this site released the same statistic over another roster; "
                          "answering would reveal the difference",
}


class PolicyRefused(Exception):
    """A site refused a round under its own policy (nothing was released).

    ``str(error)`` is ``"refused[CODE]: fixed message"``: safe to send and log.
    """

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal
        super().__init__(f"refused[{refusal.value}]: {refusal.message}")

    @property
    def code(self) -> str:
        return self.refusal.value
