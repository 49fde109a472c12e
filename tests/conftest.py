"""Test-suite wiring. Rig fixtures (real guests, containers, block I/O) live in tests/rig/."""
pytest_plugins = ["tests.rig.common", "tests.rig.kvm", "tests.rig.containerd", "tests.rig.net", "tests.rig.fleet"]
