"""Generated protobuf and gRPC modules for the ``agentkeeper.v1`` wire contract.

Regenerate with ``python sdk/python/scripts/generate_proto.py``; do not edit by hand.
"""
