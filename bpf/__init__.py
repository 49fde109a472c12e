"""BPF C sources, one per probe family; loaded by vcheck.probes (bcc) or built by vcheck.bpf_build (CO-RE), found through importlib.resources as vcheck.bpf."""
