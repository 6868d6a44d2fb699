"""``triplicate web``: the read-only dashboard, JSON API and Prometheus metrics (docs/web.md).

``data`` reads the state database into plain JSON values, ``charts`` draws SVG
plots, ``pages`` renders HTML, ``api`` describes the API (OpenAPI), ``access``
checks the ``[web]`` settings and logins, and ``app`` serves all of it with aiohttp.
"""
