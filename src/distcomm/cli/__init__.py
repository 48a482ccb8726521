"""The command line: python -m distcomm info, bench and trace."""
