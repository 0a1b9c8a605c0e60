"""The data contract: the transaction log and catalog, the id index, interaction
matrices, seeded samples and generated demo shops."""
