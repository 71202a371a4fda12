"""IDU generation."""
