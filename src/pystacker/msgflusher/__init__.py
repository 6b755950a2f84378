"""MsgFlusher: finishes inbox entries that a dead or stuck gateway read but never acknowledged."""
