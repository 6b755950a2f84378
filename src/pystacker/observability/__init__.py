"""Metrics (`metrics.py`), the sliding-window monitor (`monitor.py`) and their HTTP routes (`routes.py`)."""
