"""bnlab: a reproducible replication of the batch-normalization literature's empirical claims."""
