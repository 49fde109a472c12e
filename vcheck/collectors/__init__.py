"""Collectors: one module per layer. Each declares its METRICS and implements Collector."""
