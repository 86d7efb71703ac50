"""One message round to the sites: send, wait up to `round-timeout`, and sort the answers.

A site that errs or does not answer in time is left out of that phase and recorded in
`RunState.missing` (the report names it); fewer than `min-sites` answers stop the run with
`FederationError`. Answers are returned in site order, so sums over them are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from flwr.app import Message, RecordDict

from ndae.federation.config import FederationConfig
from ndae.federation.server.errors import FederationError

__all__ = ["PhaseResult", "RunState", "SiteMessenger"]


@dataclass
class PhaseResult:
    replies: dict[str, RecordDict]  # site -> reply content
    missing: dict[str, str]  # site -> reason


@dataclass
class RunState:
    sites: dict[int, str] = field(default_factory=dict)  # node id -> site name
    info: dict[str, dict] = field(default_factory=dict)  # site -> site_info
    missing: list[dict] = field(default_factory=list)  # {"phase", "round", "site", "reason"}
    participation: dict[str, int] = field(default_factory=dict)  # site -> training rounds answered


class SiteMessenger:
    """Message rounds over a Flower `Grid`; `on_answers` sees every phase's good answers first
    (private runs record the sites' ledger heads there, even if the phase then fails)."""

    def __init__(self, grid, config: FederationConfig, state: RunState, log: Callable[[str], None],
                 on_answers: Callable[[dict[str, RecordDict]], None] = lambda replies: None):
        self.grid, self.config, self.state, self.log, self.on_answers = grid, config, state, log, on_answers

    def send(self, messages: list[Message]) -> list[Message]:
        return list(self.grid.send_and_receive(messages, timeout=self.config.round_timeout))

    def collect(self, phase: str, sent: Iterable[int], replies: list[Message], round_number: int = 0) -> PhaseResult:
        """Split `replies` into answers and missing sites (errors, silence); enforce `min-sites`."""
        ok, missing = {}, {}
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            site = self.state.sites.get(node, f"node-{node}")
            answered.add(node)
            if reply.has_error():
                from ndae.federation.site_reasons import site_reason

                missing[site] = f"error: {site_reason(reply.error.reason)}"  # the site's own exception, one line
            else:
                ok[site] = reply.content
        for node in sent:
            if node not in answered:
                missing[self.state.sites.get(node, f"node-{node}")] = f"no reply within {self.config.round_timeout:g} s"
        where = f"{phase}{' round ' + str(round_number) if round_number else ''}"
        for site, reason in sorted(missing.items()):
            self.state.missing.append({"phase": phase, "round": round_number, "site": site, "reason": reason[:500]})
            self.log(f"[{where}] site {site} left out: {reason[:200]}")
        self.on_answers(ok)  # releases that reached us count, even if the phase fails below
        if len(ok) < self.config.min_sites:
            raise FederationError(
                f"phase {where}: {len(ok)} site(s) answered ({sorted(ok)}), fewer than min-sites = "
                f"{self.config.min_sites}; missing: {missing}")
        return PhaseResult(dict(sorted(ok.items())), missing)

    def query(self, phase: str, content: Callable[[str], RecordDict] | RecordDict,
              sites: Iterable[str] | None = None) -> PhaseResult:
        """Send `query.<phase>` to every known site (or only `sites`), in site order; `content`
        may be a function of the site name."""
        chosen = None if sites is None else set(sites)
        nodes = [n for n, s in sorted(self.state.sites.items(), key=lambda item: item[1])
                 if chosen is None or s in chosen]
        messages = [Message(content(self.state.sites[n]) if callable(content) else content, dst_node_id=n,
                            message_type=f"query.{phase}") for n in nodes]
        return self.collect(phase, nodes, self.send(messages))
