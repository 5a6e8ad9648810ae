"""The path a request is routed on, for the middleware that decides before routing.

Starlette routes on the path with the app's ``root_path`` stripped (``--root-path /api``:
``/api/predict/iris`` is served by ``/predict/iris``); a check on the raw ``scope["path"]``
would let such a request past the API keys and the concurrency limit. This is Starlette's own
rule (``starlette._utils.get_route_path``, private, so restated here).
"""

import re

from starlette.types import Scope

_SLASHES = re.compile("/{2,}")


def route_path(scope: Scope) -> str:
    """The path Starlette's router matches ``scope`` on."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


def client_route(path: str) -> bool:
    """Whether a request routed on ``path`` is for a route client applications call (/predict,
    /predict/{model}, /feedback): those API keys guard and the concurrency limit sheds. Slashes
    doubled by the client are read as one: never such a route let past either check."""
    if "//" in path:
        path = _SLASHES.sub("/", path)
    return path == "/feedback" or path == "/predict" or path.startswith("/predict/")
