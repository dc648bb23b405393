"""Generated protobuf and gRPC modules of the KServe v2 / Open Inference Protocol (package
`inference`, Triton's `GRPCInferenceService`), from the published subset in
`protos/inference/grpc_service.proto`.

Produced by `make protos`; never edit by hand (CI fails on drift). `galactic_client` never
imports these, so they load beside `tritonclient` (which registers the same message names
from its own copy) in any process that does not import both.
"""
