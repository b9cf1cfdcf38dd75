"""The `replicator` command line: a thin click layer over the library (installed as `replicator_cli`)."""
