"""Operator commands: state rebuild, DLQ replay, erasure, watch."""
