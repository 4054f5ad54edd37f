"""Tools around the product: the benchmark and the offline tiny models."""
