"""batchq: batch inference for Qwen models over a per-variant Celery queue."""



def __getattr__(name: str) -> str:
    # Read when asked, not at every import: pyproject.toml is the one place it is written.
    if name == "__version__":
        from importlib.metadata import version

        return version("batchq")
    raise AttributeError(name)
