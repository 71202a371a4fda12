"""IDU generation/human."""
