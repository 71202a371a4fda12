"""IDU bench."""
