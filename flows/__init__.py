"""IDU flows."""
