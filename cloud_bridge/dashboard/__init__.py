"""The operators' web dashboard on the bridge's HTTPS endpoint (docs/dashboard.md)."""
