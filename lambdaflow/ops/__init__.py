"""The operator's shells beside the CLI: the demo and the `make up` stack."""
