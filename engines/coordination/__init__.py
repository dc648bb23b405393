"""Galactic coordination: which site should observe which target in the next window.

Sky geometry (`sky`), the physics of depth and sky brightness (`physics`), pair features
(`features`), the P(success) network (`model`), the exact assignment solver (`solver`) and
the engine that batches requests from many clients (`engine`).
"""
