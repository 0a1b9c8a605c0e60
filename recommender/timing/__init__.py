"""Timing: when a customer buys again (BG/NBD, MBG/NBD, Pareto/NBD and their
selection), which items they rebuy and when, and the timing metrics."""
