"""Ranking: the recommender interface and top-k search, ALS, the baselines and
the ranking metrics."""
