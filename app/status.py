"""What a running server serves, asked over HTTP (`steward status`).

The registry on disk says what should serve; this asks the server what does (`GET /models`,
`GET /models/{model}`). Standard library only, so the command stays light.
"""

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from app.errors import StewardError, UnknownModel

if TYPE_CHECKING:
    from app.aliases import TrafficPolicy

TIMEOUT_SECONDS = 5.0


class ServerUnreachable(StewardError):
    """No Steward server answered at the URL."""

    code = "server_unreachable"


def server_url(host: str, port: int) -> str:
    """The URL a local client reaches a server bound to ``host``:``port`` at."""
    if host in ("0.0.0.0", ""):  # bound to every address: ask over loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def fetch(url: str, model: str | None = None) -> Any:
    """The server's `GET /models` (no model) or `GET /models/{model}`, decoded."""
    base = url.rstrip("/")
    path = "/models" if model is None else f"/models/{urllib.parse.quote(model, safe='')}"
    try:
        with urllib.request.urlopen(base + path, timeout=TIMEOUT_SECONDS) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404 and model is not None:
            raise UnknownModel(f"the server at {base} serves no model {model!r}") from exc
        raise ServerUnreachable(f"the server at {base} answered {exc.code} to GET {path}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerUnreachable(
            f"no Steward server answered at {base} ({reason}): start one with `steward serve`, "
            "or give its address with --url"
        ) from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ServerUnreachable(
            f"{base}{path} did not answer JSON: is it a Steward server?"
        ) from exc


def render_models(summaries: list[dict[str, Any]]) -> list[str]:
    """`GET /models` as a table: what each model serves, its aliases, its traffic mode, why it
    is refused."""
    if not summaries:
        return ["the server serves no models"]
    rows = [("MODEL", "SERVING", "ALIASES", "TRAFFIC", "REFUSED")]
    for summary in summaries:
        serving = summary.get("serving")
        rows.append(
            (
                str(summary.get("name")),
                "-" if serving is None else str(serving),
                _aliases(summary.get("aliases") or {}) or "-",
                str(summary.get("traffic") or "none"),
                str(summary.get("refused") or ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        (
            "  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(row[:4])) + "  " + row[4]
        ).rstrip()
        for row in rows
    ]


def render_model(detail: dict[str, Any]) -> list[str]:
    """`GET /models/{model}`: its aliases, the versions in memory, its traffic and
    automatic-rollback policies, and refusals."""
    loaded = [
        f"{v.get('version')}"
        + (f" ({', '.join(v['aliases'])})" if v.get("aliases") else "")
        + _runtime(v)
        for v in detail.get("loaded") or []
    ]
    lines = [
        f"model:   {detail.get('name')}",
        f"aliases: {_aliases(detail.get('aliases') or {}) or '-'}",
        f"loaded:  {', '.join(loaded) or 'none'}",
        f"traffic: {_traffic(detail.get('traffic') or {})}",
    ]
    auto = detail.get("auto_rollback")
    if isinstance(auto, dict):
        lines.append(f"auto-rollback: {auto_rollback_text(auto)}")
        if auto.get("enabled"):
            lines.append(f"  {auto.get('reason')}")  # its state, in words
    for refusal in detail.get("refusals") or []:
        version = refusal.get("version")
        what = "aliases.json" if version is None else f"version {version}"
        message = str(refusal.get("message") or "")
        # The message starts "<model>: refused (<reason>): " already: keep what follows.
        message = (
            message.split("): ", 1)[-1]
            if message.startswith(f"{detail.get('name')}: refused (")
            else message
        )
        lines.append(f"refused: {what} ({refusal.get('reason')}): {message}")
    return lines


def auto_rollback_text(policy: dict[str, Any]) -> str:
    """An automatic-rollback policy in words (GET /models/{model}'s ``auto_rollback``, or the
    policy the CLI just set), saying where it comes from."""
    if policy.get("source") == "model":
        source = f"this model's own, set by {policy.get('set_by') or '?'}"
    else:
        source = "STEWARD_AUTO_ROLLBACK*"
    if not policy.get("enabled"):
        return f"off ({source})"
    return (
        f"on: after a promote, over at least {policy.get('min_labels')} labels, margin "
        f"{policy.get('margin')} ({source})"
    )


def _runtime(version: dict[str, Any]) -> str:
    """What answers a loaded version's requests: its compiled twin, or scikit-learn and why."""
    runtime = version.get("runtime")
    if runtime is None:  # a server from before compiled twins
        return ""
    fallback = version.get("fallback")
    if isinstance(fallback, dict) and fallback.get("reason"):
        return f" on {runtime} ({fallback['reason']})"
    return f" on {runtime}"


def _aliases(aliases: dict[str, Any]) -> str:
    return " ".join(f"{alias}={version}" for alias, version in sorted(aliases.items()))


def percent_text(percent: float) -> str:
    """A share as people write it: 10%, 12.5%, 100%."""
    return f"{percent:g}%"


def policy_text(policy: "TrafficPolicy") -> str:
    """A traffic policy in words, naming the candidate it was set for."""
    if policy.mode == "none":
        return "none (production answers every request)"
    to = f"candidate v{policy.candidate}"
    share = percent_text(policy.percent)
    if policy.mode == "shadow":
        return f"shadow: {to} also predicts {share} of requests, never answering"
    return f"canary: {to} answers {share} of requests"


def _traffic(traffic: dict[str, Any]) -> str:
    mode = str(traffic.get("mode") or "none")
    if mode == "none":
        return "none"
    percent = traffic.get("percent")
    share = percent_text(percent) if isinstance(percent, int | float) else "?"
    if traffic.get("active"):
        return f"{mode} {share} (active)"
    return f"{mode} {share} (inactive: {traffic.get('inactive_reason') or 'unknown'})"
