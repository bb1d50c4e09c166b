"""Benchmarks of deel_lip against plain Keras (`make bench`)."""
