"""Certificate path validation and revocation checking (knows nothing of tokens or SSH)."""
