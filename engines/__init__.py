"""Model engines: everything that touches a tensor. Never imports protobuf or the daemon."""
