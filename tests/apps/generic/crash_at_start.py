"""An [app] fixture that crashes at start with a recognisable stderr line
(what `polyhost status SITE` must show for a crash loop)."""
import sys

print("crash-fixture: starting", file=sys.stderr, flush=True)
print("crash-fixture: FATAL cannot open /nonexistent/app.db (exit 3)", file=sys.stderr, flush=True)
sys.exit(3)
