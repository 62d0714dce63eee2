"""The load generator `chat-loadtest` (docs/loadtest.md).

__main__ parses the command line; coordinator forks worker processes and keeps
them in step over pipes (link); worker drives its slice of the connections;
client is one connection; report does the accounting; plot draws the PNG.

Not part of the server: installed as the `loadtest` extra, which brings numpy and
matplotlib (`pip install '.[loadtest]'`).
"""
