"""batchq: batch inference for Qwen models over a per-variant Celery queue."""

__version__ = "0.1.0"
