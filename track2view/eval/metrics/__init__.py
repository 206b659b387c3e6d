"""One module per metric, each behind `track2view.eval.metric.Metric` (registry.py builds them by name)."""
