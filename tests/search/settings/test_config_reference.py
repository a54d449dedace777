"""docs/config.md is the schema's own reference: regenerated, it is unchanged, and every key has a description."""

from __future__ import annotations

from peft_search.search.settings import reference
from peft_search.search.settings.schema import SearchConfig
from tests import ROOT

DOCS = ROOT / "docs" / "config.md"


def test_the_reference_page_is_current():
    assert DOCS.read_text() == reference.markdown() + "\n", (
        "regenerate it: python -m peft_search.search.settings.reference > docs/config.md"
    )


def test_every_key_is_documented():
    for _, model in reference._sections(SearchConfig, ""):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} needs a docstring (it is the key's reference)"
