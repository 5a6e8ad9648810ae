"""The HTTP side of the metrics, as pure-ASGI middleware (the collectors: app/metrics.py)."""

import time
from collections.abc import Sequence

from prometheus_client import Counter, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics

UNMATCHED_ROUTE = "_unmatched"
OTHER_METHOD = "_other"  # clients may send any token as a method; labels stay bounded
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Pure-ASGI middleware: request count and latency by method, route template and status.

    An exception escaping the app counts as a 500. Scrapes and health probes are not counted.
    ``routes`` are the app's routes, flat: a request answered before routing (413) or by a
    mount (docs assets) is labelled with the template of the route it matches among them.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        routes: Sequence[BaseRoute],
        skip_paths: frozenset[str] = frozenset({"/metrics", "/healthz", "/readyz"}),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = tuple(routes)
        self.skip_paths = skip_paths
        # Label children by (method, route template, status): bounded by the app's routes.
        self._children: dict[tuple[str, str, int], tuple[Histogram, Counter]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()
        root_path = scope.get("root_path", "")  # a mount changes it while routing

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
            key = (method, self._route_template(scope, root_path), status)
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    self.metrics.http_duration.labels(key[0], key[1]),
                    self.metrics.http_requests.labels(key[0], key[1], str(status)),
                )
            children[0].observe(time.perf_counter() - started)
            children[1].inc()

    def _route_template(self, scope: Scope, root_path: str) -> str:
        """The matched route's path template; matched here only when routing did not say,
        against the request as it came in (``root_path`` before any mount changed it)."""
        route = scope.get("route")
        if route is None:
            arrived = {**scope, "root_path": root_path}
            route = next((r for r in self.routes if r.matches(arrived)[0] != Match.NONE), None)
        return getattr(route, "path", UNMATCHED_ROUTE)
