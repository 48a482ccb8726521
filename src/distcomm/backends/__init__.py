"""The small interface a communicator runs on (Backend), its handles, and the torch.distributed and single-process backends."""
