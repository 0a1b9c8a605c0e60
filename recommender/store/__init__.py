"""The store: the artifact format of a model version (atomic writes, the
``current`` pointer) and the bundle that serving loads from it."""
