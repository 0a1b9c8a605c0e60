"""Value: how much a customer spends per order (the Gamma-Gamma model) and what
they are worth over a horizon (lifetime value from the timing and spend models)."""
