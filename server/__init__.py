"""gRPC server, client and the `ledserve` command line (server/cli.py)."""
