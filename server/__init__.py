"""gRPC server (`app`, `service`), its client (`client`) and their commands: `ledserve serve`
(`cli`) and `ledserve ask` (`ask`, which needs only grpcio and protobuf)."""
