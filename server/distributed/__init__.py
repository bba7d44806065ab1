"""Tensor and expert parallelism: one engine process per rank; rank 0 schedules."""
