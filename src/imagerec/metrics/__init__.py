"""Metrics per task: pure objects with update(outputs, targets) and compute() -> JSON-ready dict."""
