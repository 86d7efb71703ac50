"""Runs AT THE SITE: the release layer. A handler computes; this layer decides what leaves.

`RELEASES` is the site's release table: for every message type, every field of its reply (and
every key inside a reply record whose keys differ in what they reveal) and every request field
the site may refuse, what happens in a private run:

- `NOISED`: a DP release, noised and accounted in the site's ledger under `mechanism`;
- `DECLARED`: a release that is not DP, sent only where the node config key `allowed_by` allows
  it (every key: the site's own policy, never the run config), written to the ledger under
  `mechanism` where one is named;
- `SENT`: public in any run (a shape, a name, what follows from the DP parameters);
- `WITHHELD`: never leaves a private site (dropped, or replaced by `placeholder`);
- `REFUSED` (request fields): the whole message is refused before any data is read.

In a non-private run every reply field is sent (a request field may still need the site's
consent: `share-rows`). `release_layer(message_type)` wraps a handler the way a Flower mod wraps
a ClientApp: before it, the site's policy and the table's refusals (nothing read yet); after it,
the reply is filtered through the table, the ledger excerpt attached, and a private reply field
the table does not name is refused, so a new field cannot leave a private site unnoticed.
`docs/privacy.md` carries `markdown_table()` between its release-table markers (a test compares).
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from ndae.federation.site.context import SiteRefusal, flag, site_of
from ndae.federation.site.policy import PolicyViolation
from ndae.federation.site.score_histograms import HISTOGRAM_SCORES

__all__ = ["NOISED", "DECLARED", "SENT", "WITHHELD", "REFUSED", "Release", "RELEASES", "LEDGER_FIELD", "Gate",
           "release_layer", "markdown_table", "mechanisms"]

NOISED, DECLARED, SENT, WITHHELD, REFUSED = "noised", "declared", "sent", "withheld", "refused"
LEDGER_FIELD = "privacy"  # the reply field that carries the ledger excerpt and signed head


@dataclass(frozen=True)
class Release:
    message: str  # the message type
    field: str  # a reply field, "field.key" for a key inside a reply record (patterns allowed), or a request field
    private: str  # NOISED / DECLARED / SENT / WITHHELD / REFUSED: what a private run does with it
    mechanism: str = ""  # the ledger mechanism that records it ("" = not a ledger line of its own)
    allowed_by: str = ""  # the node config key whose setting lets a DECLARED release (or a request) through
    placeholder: Any = None  # a WITHHELD key sent as this value instead (None: dropped)
    request: bool = False  # a field of the server's request (refused before the handler runs)
    refusal: str = ""  # the refusal's text ({site} = the site's name)
    any_run: bool = False  # the request needs `allowed_by` in non-private runs too


_NO_VOXELWISE = ("site {site!r} refuses the voxel-wise baseline in a private run: its per-voxel moments are exact "
                 "sums, not a differentially private release")
_NO_ROWS = ("site {site!r} refuses to share patients' deviation scores: its policy does not allow pooled scores in "
            "this run (node config allow-pooled-scores / survival-modes); use survival-mode federated")
_LEDGER = "the ledger excerpt and signed head: DP parameters, this run's declared lines"

RELEASES: tuple[Release, ...] = (
    Release("query.site_info", "info.site", SENT),
    Release("query.site_info", "info.channels", SENT),
    Release("query.site_info", "info.height", SENT),
    Release("query.site_info", "info.width", SENT),
    Release("query.site_info", "info.controls", DECLARED, allowed_by="public-counts", placeholder=-1),
    Release("query.site_info", "info.patients", DECLARED, allowed_by="public-counts", placeholder=-1),
    Release("train", "arrays", NOISED, mechanism="dp-sgd"),
    Release("train", "metrics.local-steps", SENT),  # follows from the DP parameters in the ledger
    Release("train", "metrics.num-examples", DECLARED, allowed_by="public-counts", placeholder=1),
    Release("train", "metrics.train-loss", WITHHELD),
    Release("train", LEDGER_FIELD, DECLARED),
    Release("train", f"{LEDGER_FIELD}.noise-multiplier", SENT),  # this round's DP parameter, in the ledger too
    Release("query.normative_stats", "stats", NOISED, mechanism="gaussian-moments"),
    Release("query.normative_stats", "stats-initial", WITHHELD),  # of the initial weights: the age probe's yardstick
    Release("query.normative_stats", "fold-stats-*", WITHHELD),
    Release("query.normative_stats", LEDGER_FIELD, DECLARED),
    Release("query.prior_residual_stats", "stats", NOISED, mechanism="gaussian-moments"),
    Release("query.prior_residual_stats", "columns", SENT),  # the atlas regions the preset's slices cut
    Release("query.prior_residual_stats", "columns.columns", SENT),
    Release("query.prior_residual_stats", LEDGER_FIELD, DECLARED),
    Release("query.voxelwise_stats", "*", REFUSED, request=True, refusal=_NO_VOXELWISE),
    Release("query.voxelwise_stats", "stats", WITHHELD),
    Release("query.deviations", "share-rows", DECLARED, allowed_by="allow-pooled-scores", request=True,
            refusal=_NO_ROWS, any_run=True),
    Release("query.deviations", "voxelwise", REFUSED, request=True, refusal=_NO_VOXELWISE),
    Release("query.deviations", "counts", DECLARED, allowed_by="public-counts"),
    Release("query.deviations", "counts.patients", DECLARED, allowed_by="public-counts"),
    Release("query.deviations", "counts.events", DECLARED, allowed_by="public-counts"),
    Release("query.deviations", "moments", WITHHELD),
    Release("query.deviations", "voxelwise-error", WITHHELD),
    Release("query.deviations", "prior-swap", WITHHELD),
    Release("query.deviations", "rows", DECLARED, mechanism="shared-scores", allowed_by="allow-pooled-scores"),
    Release("query.deviations", "score-histograms", DECLARED, mechanism="score-histograms",
            allowed_by="public-counts"),
    *(Release("query.deviations", f"score-histograms.{group}-{score}", DECLARED, allowed_by="public-counts")
      for score in HISTOGRAM_SCORES for group in ("control", "patient")),
    # the held-out calibration needs the per-fold statistics, which a private run never sends
    Release("query.deviations", "score-histograms.calibration", WITHHELD),
    Release("query.deviations", LEDGER_FIELD, DECLARED),
    Release("query.cox_terms", "terms", DECLARED, mechanism="cox-terms", allowed_by="max-cox-queries"),
    Release("query.cox_terms", "terms.gradient", DECLARED, allowed_by="max-cox-queries"),
    Release("query.cox_terms", "terms.hessian", DECLARED, allowed_by="max-cox-queries"),
    Release("query.cox_terms", "terms.log_likelihood", DECLARED, allowed_by="max-cox-queries"),
    Release("query.cox_terms", "terms.n", DECLARED, allowed_by="public-counts"),
    Release("query.cox_terms", "terms.events", DECLARED, allowed_by="public-counts"),
    Release("query.cox_terms", LEDGER_FIELD, DECLARED),
    Release("query.risk_summary", "summary", DECLARED, mechanism="risk-summary", allowed_by="max-cox-queries"),
    Release("query.risk_summary", "summary.comparable", DECLARED, allowed_by="max-cox-queries"),
    Release("query.risk_summary", "summary.concordant", DECLARED, allowed_by="max-cox-queries"),
    Release("query.risk_summary", "summary.paired_sums", DECLARED, allowed_by="max-cox-queries"),
    Release("query.risk_summary", "summary.paired_cross", DECLARED, allowed_by="max-cox-queries"),
    # Kaplan–Meier counts per month and tertile are row-level on a small site
    Release("query.risk_summary", "summary.km", WITHHELD, placeholder=np.zeros((0, 4))),
    Release("query.risk_summary", LEDGER_FIELD, DECLARED),
)


def mechanisms() -> set[str]:
    """The ledger mechanisms the table names (the ledger's MECHANISMS, tested)."""
    return {r.mechanism for r in RELEASES if r.mechanism}


def _rules(message_type: str, *, request: bool) -> list[Release]:
    return [r for r in RELEASES if r.message == message_type and r.request == request]


def _rule(rules: list[Release], field: str) -> Release | None:
    return next((r for r in rules if fnmatch.fnmatchcase(field, r.field)), None)


class Gate:
    """One message's view of the table, for the handler and the layer: the run's config, the
    site's policy in force, the site, and (in a private run, built once) its privacy state."""

    def __init__(self, message_type: str, context: Context):
        self.message_type = message_type
        self.context = context
        self.config, self.policy, self.site = site_of(context)  # the policy is enforced before any data is read
        self._private = bool(self.config.privacy)
        self._replies = _rules(message_type, request=False)
        self._privacy = None

    # ---- what the handler asks --------------------------------------------------------------
    def _allowed(self, key: str) -> bool:
        if key == "public-counts":
            return self.policy.public_counts
        if key == "allow-pooled-scores":
            return "pooled" in self.policy.survival_modes and self.policy.pooled_scores_allowed(self._private)
        return True  # max-cox-queries: a count the handler keeps (in the ledger) as it answers

    def _outcome(self, field: str) -> str:
        """What this run does with a reply field: SENT, NOISED, DECLARED (allowed) or WITHHELD."""
        if not self._private:
            return SENT
        rule = _rule(self._replies, field)
        if rule is None and any(r.field.startswith(field + ".") for r in self._replies):
            return SENT  # a record whose keys the table names one by one (`leaving`)
        if rule is None:
            raise SiteRefusal(f"site refuses to send {field!r} in its {self.message_type} reply: the field is not "
                              "in the site's release table")
        if rule.private == DECLARED and rule.allowed_by and not self._allowed(rule.allowed_by):
            return WITHHELD
        return rule.private if rule.private in (NOISED, DECLARED, SENT) else WITHHELD

    def sends(self, field: str) -> bool:
        """Whether `field` of the reply may leave the site in this run."""
        return self._outcome(field) != WITHHELD

    def noised(self, field: str) -> bool:
        """Whether `field` leaves through its DP mechanism (and the handler must account it)."""
        return self._outcome(field) == NOISED

    def declared(self, field: str) -> bool:
        """Whether `field` leaves as a declared release (the handler writes its ledger line)."""
        return self._outcome(field) == DECLARED

    def privacy(self):
        """The site's privacy state for this run (private runs), built once per message."""
        if self._privacy is None:
            from ndae.federation.site.context import site_privacy

            self._privacy = site_privacy(self.config, self.policy, self.context, self.site)
        return self._privacy

    def leaving(self, field: str, values: dict) -> dict:
        """The keys of the reply record `field` as they may leave (withheld keys dropped or
        replaced by their placeholder): what a handler writes to the ledger is what is sent."""
        if not self._private:
            return dict(values)
        out = {}
        for key, value in values.items():
            outcome = self._outcome(f"{field}.{key}")
            if outcome != WITHHELD:
                out[key] = value
            elif (rule := _rule(self._replies, f"{field}.{key}")).placeholder is not None:
                out[key] = rule.placeholder
        return out

    # ---- what the layer does ------------------------------------------------------------------
    def refuse_before_reading(self, message: Message) -> None:
        for rule in _rules(self.message_type, request=True):
            if not (self._private or rule.any_run):
                continue
            if rule.field == "*":
                asked = True
            elif rule.field in message.content:
                asked = True
            else:
                settings = message.content["config"] if "config" in message.content else {}
                asked = rule.field in settings and flag(settings, rule.field)
            if asked and (rule.private == REFUSED or not self._allowed(rule.allowed_by)):
                raise PolicyViolation(rule.refusal.format(site=self.site.name))

    def release(self, content: dict, message: Message) -> Message:
        if not self._private:
            return Message(RecordDict(content), reply_to=message)
        out = {}
        for field, record in content.items():
            if field == LEDGER_FIELD or not self.sends(field):
                continue
            if any(r.field.startswith(field + ".") for r in self._replies):
                record = _record_like(record, self.leaving(field, dict(record.items())))
            out[field] = record
        if _rule(self._replies, LEDGER_FIELD) is not None:  # after the handler wrote its lines
            from ndae.federation.site.privacy import ledger_reply

            signed = ledger_reply(self.privacy())
            extra = dict(content[LEDGER_FIELD]) if LEDGER_FIELD in content else {}
            if set(extra) & set(signed):  # a handler never overwrites the signed head, ε or the excerpt
                raise SiteRefusal(f"site refuses to send its {self.message_type} reply: the handler's "
                                  f"{LEDGER_FIELD!r} record names ledger fields {sorted(set(extra) & set(signed))}")
            out[LEDGER_FIELD] = ConfigRecord({**self.leaving(LEDGER_FIELD, extra), **signed})
        return Message(RecordDict(out), reply_to=message)


def _record_like(record, values: dict):
    if isinstance(record, ArrayRecord):
        return ArrayRecord({k: v if isinstance(v, Array) else Array(np.asarray(v).copy(order="C"))
                            for k, v in values.items()})
    return type(record)(values)


def release_layer(message_type: str) -> Callable:
    """Wrap `compute(message, gate) -> reply fields` into a ClientApp handler for `message_type`."""
    def wrap(compute):
        @functools.wraps(compute)
        def handler(message: Message, context: Context) -> Message:
            gate = Gate(message_type, context)
            gate.refuse_before_reading(message)
            return gate.release(compute(message, gate), message)

        return handler

    return wrap


_PRIVATE_TEXT = {NOISED: "noised, accounted", DECLARED: "declared", SENT: "sent (public)", WITHHELD: "withheld",
                 REFUSED: "refused before any data is read"}


def markdown_table() -> str:
    """The release table as docs/privacy.md shows it (between its release-table markers)."""
    lines = ["| message | field | private run | ledger mechanism | allowed by (node config) | non-private run |",
             "|---|---|---|---|---|---|"]
    for r in RELEASES:
        field = f"request `{r.field}`" if r.request else f"`{r.field}`"
        private = _PRIVATE_TEXT[r.private]
        if r.placeholder is not None:
            shown = "empty" if isinstance(r.placeholder, np.ndarray) else r.placeholder
            private += f" (sent as {shown})" if r.private == WITHHELD else f" (else sent as {shown})"
        if r.field == LEDGER_FIELD:
            private += f": {_LEDGER}"
        public = ("needs `" + r.allowed_by + "`" if r.any_run else "answered") if r.request else "sent"
        if r.field == LEDGER_FIELD:
            public = "—"
        lines.append(f"| `{r.message}` | {field} | {private} | {('`' + r.mechanism + '`') if r.mechanism else '—'} "
                     f"| {('`' + r.allowed_by + '`') if r.allowed_by else '—'} | {public} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
