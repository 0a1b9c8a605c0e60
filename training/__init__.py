"""Encore's training pipeline: from a transaction log to a published model version.

Never imports the serving app or FastAPI; it writes the bundle format defined in
:mod:`recommender.store.bundle`, which is all the serving app reads.
"""
