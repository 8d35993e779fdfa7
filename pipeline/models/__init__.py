"""Networks and losses, one module per method (see docs/internals.md and METHODS.md)."""
