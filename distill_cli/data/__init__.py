"""Data sources: task splits, raw text, batching."""
