"""IDU review_ui."""
