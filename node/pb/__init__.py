"""Generated protobuf and gRPC code for the CRI v1 API (runtime.v1), from proto/node/pb/cri.proto by `make proto`."""
