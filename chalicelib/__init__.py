"""The API's own code, bundled by Chalice with app.py (the shared ``shop`` package comes from the layer).

- ``http``: problem+json errors, request parsing, auth helpers and the ``route`` decorator.
- ``openapi``: the OpenAPI 3.1 document built from the registered routes.
- ``catalog``, ``orders``, ``carts``, ``admin``, ``console``: the route blueprints (catalog; orders; carts; the
  operators' API; the operators' console page).

On Lambda the layer puts ``shop`` on the path. In a checkout (``chalice local``, ``chalice package``)
the layer's source sits beside this package, so it is made importable here, before any module of
this package imports ``shop``. The deployment package holds no ``layers/`` folder, so this never
applies on Lambda, and no environment is read to decide it.
"""

import sys
from pathlib import Path

_CHECKOUT_LAYER = Path(__file__).resolve().parent.parent / "layers" / "shared" / "python"
if _CHECKOUT_LAYER.is_dir() and str(_CHECKOUT_LAYER) not in sys.path:
    # Appended: a `shop` already importable (PYTHONPATH, the Lambda layer) wins.
    sys.path.append(str(_CHECKOUT_LAYER))
