"""The floor (the Channels tutorial consumer) and the ceiling (a bare websockets server)."""
