"""Collectors: one module per source (guest /proc, disks, scheduler, hypervisor, KVM exits,
containers). Each declares its METRICS and implements collectors.base.Collector; the catalogue
(vcheck/catalog.py) lists them."""
