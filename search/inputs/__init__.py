"""The model and the data a search runs on: loading, inspecting, splitting, tokenizing, injecting adapters."""
