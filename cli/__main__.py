from replicator_cli.main import cli

cli(prog_name="replicator")
