"""IDU tasks."""
