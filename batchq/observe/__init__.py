"""Watching batchq run: progress bars, the job report, Prometheus metrics, Flower."""
