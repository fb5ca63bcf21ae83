"""An [app] fixture that never becomes ready: it keeps the socket it was
handed (connections wait in the backlog) and never answers."""
import sys
import time

print("never-ready: holding the socket, never answering", file=sys.stderr, flush=True)
while True:
    time.sleep(3600)
