"""The `idm` command line: a thin shell over idm.identity and idm.validator."""
