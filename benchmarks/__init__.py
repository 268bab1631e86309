"""Benchmarks: XLA cost, memory and step time of the dpjax engines against baselines."""
