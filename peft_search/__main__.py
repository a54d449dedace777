"""``python -m peft_search``: the ``peft-search`` command."""

from peft_search.search.cli import entry

entry()
