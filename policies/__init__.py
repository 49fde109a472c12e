"""Shipped policy packs; `vcheck run` with no policy uses node-conformance.yaml."""
