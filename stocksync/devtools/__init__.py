"""Tools for development, never imported by the product: marketplace simulators, the demo and its sandbox,
the 15-minute polling model, and helpers for tests."""
