"""Debugging communicators: CheckedCommunicator and ProfiledCommunicator, views of any communicator with hooks."""
