"""Encore's serving app: loads published bundles and answers queries over HTTP.

Never imports ``training``; reads only the bundle format of
:mod:`recommender.store.bundle`.
"""
