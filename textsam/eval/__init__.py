"""Benchmark evaluation: metrics (:mod:`.metrics`), benchmarks (:mod:`.runners`) and the resumable,
torchrun-sharded runner (:mod:`.runner`). Nothing here is imported by inference code."""
