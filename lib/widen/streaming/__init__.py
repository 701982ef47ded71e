"""Streaming glue: the foreachBatch sink and the metrics listener (no SQL of their own)."""
