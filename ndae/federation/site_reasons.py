"""A site's refusal as one clean line, whatever wrapped it on the way to the server.

A ClientApp that raises (a `PolicyViolation`, `PrivacyBudgetExceeded`, ...) reaches the ServerApp
as an error reply whose `reason` depends on the runtime:

- Flower's Ray simulation: the repr of a `RayTaskError(ClientAppException)` — a colourised
  (ANSI) traceback of the actor in which the site's exception is one line among many;
- a deployed `flwr-clientapp`: `<class 'ndae....PolicyViolation'>:<'the message'>`;
- `InProcessGrid`: `PolicyViolation: the message` followed by a short traceback.

`site_reason` returns `ExceptionName: message` (the site's own exception, not the wrapper), so
the server's log, `status.json`, the failure report and the CLI all show the site's reason.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# A traceback's last line: an optionally dotted exception class name, a colon, the message.
_EXCEPTION_LINE = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*)([A-Za-z_]\w*(?:Error|Exception|Violation|Exceeded|Refused|Kill))"
                             r":\s*(\S.*)$")
_FLOWER_CLASS = re.compile(r"<class '([\w.]+)'>:<'(.*?)'>?\s*$", re.S)
_RAY_MESSAGE = re.compile(r"Exception \w+ occurred\. Message: (.*)")
# Wrappers whose message is only a copy of the site's exception's.
_WRAPPERS = ("ClientAppException", "RayTaskError", "RayActorError")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _clean(message: str) -> str:
    message = message.strip()
    return message[:-2].rstrip() if message.endswith("'>") else message  # the end of Flower's repr


def site_reason(reason: str, limit: int = 480) -> str:
    """The site's exception (name and message) on one line, ANSI codes removed."""
    text = strip_ansi(str(reason or "")).strip()
    if not text:
        return ""
    candidates = []
    for line in text.splitlines():
        match = _EXCEPTION_LINE.match(line)
        if match and not any(w in match.group(2) for w in _WRAPPERS):
            candidates.append((match.group(1).startswith("ndae."), f"{match.group(2)}: {_clean(match.group(3))}"))
    if candidates:
        ours = [line for is_ours, line in candidates if is_ours]
        return (ours or [line for _, line in candidates])[0][:limit]
    ray = _RAY_MESSAGE.search(text)
    if ray:
        return _clean(ray.group(1))[:limit]
    flower = _FLOWER_CLASS.match(text)
    if flower and not any(w in flower.group(1) for w in _WRAPPERS):
        message = " ".join(line.strip() for line in flower.group(2).splitlines() if line.strip())
        return f"{flower.group(1).rsplit('.', 1)[-1]}: {message}"[:limit]
    return text.splitlines()[0][:limit]
