"""Shipping a trial's adapter: an export that stands on its own (``best --export``) and re-scoring it
(``peft-search evaluate``)."""
