"""HyperPrune: a shared, context-aware hypernetwork that learns n:m masks."""

from hyperprune.methods.hyperprune.method import HyperPrune  # noqa: F401  (registration)
