"""The Open Inference Protocol over gRPC (inference.GRPCInferenceService), beside REST's /v2.

    proto/        inference.proto (written from the protocol's specification) and the
                  descriptor set `make grpc-proto` compiles from it (inference.binpb)
    messages.py   the message classes, in a descriptor pool of the service's own
    tensors.py    gRPC tensors to and from the REST face's codec (one decoder for both)
    calls.py      what every call goes through: request id, API or admin key, limit, access
                  log, metrics, status codes
    servicer.py   the RPCs (metadata, inference, the repository extension); grpc.health.v1
                  driven by readiness
    server.py     one worker's server: options, health, reflection, start and drain
    ports.py      the port several workers share, reserved by the parent (no grpc import)

Off unless VAE_GRPC_PORT is set (`make serve`, the container and the manifests set 8001).
"""
