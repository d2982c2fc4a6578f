"""The API's own code, bundled by Chalice with app.py (the shared ``shop`` package comes from the layer).

- ``http``: problem+json errors, request parsing, auth helpers and the ``route`` decorator.
- ``openapi``: the OpenAPI 3.1 document built from the registered routes.
- ``catalog``, ``orders``, ``admin``: the route blueprints (catalog; orders; operators' dead letters
  and circuit breakers).
"""
