"""The HTTP side of the metrics, as pure-ASGI middleware (the collectors: app/metrics.py)."""

import time

from prometheus_client import Counter, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics

UNMATCHED_ROUTE = "_unmatched"
OTHER_METHOD = "_other"  # clients may send any token as a method; labels stay bounded
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Pure-ASGI middleware: request count and latency by method, route template and status.

    An exception escaping the app counts as a 500. Scrapes and health probes are not counted.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        skip_paths: frozenset[str] = frozenset({"/metrics", "/healthz", "/readyz"}),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.skip_paths = skip_paths
        # Label children by (method, route template, status): bounded by the app's routes.
        self._children: dict[tuple[str, str, int], tuple[Histogram, Counter]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        except BaseException:
            status = 500
            raise
        finally:
            method = scope["method"] if scope["method"] in HTTP_METHODS else OTHER_METHOD
            key = (method, _route_template(scope), status)
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    self.metrics.http_duration.labels(key[0], key[1]),
                    self.metrics.http_requests.labels(key[0], key[1], str(status)),
                )
            children[0].observe(time.perf_counter() - started)
            children[1].inc()


def _route_template(scope: Scope) -> str:
    """The matched route's path template; routing is redone only for early answers (413)."""
    route = scope.get("route")
    if route is None and "app" in scope:
        for candidate in getattr(scope["app"], "routes", ()):
            match, _ = candidate.matches(scope)
            if match != Match.NONE:
                route = candidate
                break
    return getattr(route, "path", UNMATCHED_ROUTE)
