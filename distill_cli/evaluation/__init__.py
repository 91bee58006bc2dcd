"""Task metrics, retention against the teacher, size and latency."""
