"""BPF C sources, one per probe family; loaded by vcheck.bpf through importlib.resources."""
