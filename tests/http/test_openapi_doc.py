"""docs/openapi.json is the document the gateway serves (regenerate it when the API changes:
``python -c "import json; from tidings.http.openapi import openapi_document as d;
print(json.dumps(d(), indent=2, sort_keys=True))" > docs/openapi.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from tidings.http.openapi import openapi_document

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_published_openapi_document_is_current() -> None:
    assert json.loads(DOC.read_text()) == json.loads(json.dumps(openapi_document()))
