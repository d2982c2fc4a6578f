"""The API's OpenAPI document, committed as ``openapi.json`` so that it can be read without a server.

The document is built from the registered routes (``chalicelib/openapi.py``): the one the server
serves at ``GET /openapi.json``. ``tests/unit/test_openapi_document.py`` fails when the committed
copy is not the served one.

    python -m infra.api_document          # (re)write openapi.json
    python -m infra.api_document --check  # exit 1 if openapi.json is missing or out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DOCUMENT_PATH = Path(__file__).resolve().parents[1] / "openapi.json"


def generate() -> dict[str, Any]:
    # Imported here: the app registers its routes on import, which a caller of render() alone does not need.
    from app import api_document

    return api_document()


def render(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; write nothing")
    args = parser.parse_args(argv)
    text = render(generate())
    if DOCUMENT_PATH.exists() and DOCUMENT_PATH.read_text(encoding="utf-8") == text:
        return 0
    if args.check:
        print("openapi.json is out of date: run python -m infra.api_document", file=sys.stderr)
        return 1
    DOCUMENT_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {DOCUMENT_PATH.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
