"""Networks the metrics use, each loaded from a local path (weights.py checks the path holds that network)."""
