"""Generated protobuf and gRPC modules of the galactic protocol (`galactic.v1`).

Produced by `make protos` from `protos/`; never edit by hand (CI fails on drift).
"""
