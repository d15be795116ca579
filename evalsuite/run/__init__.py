"""How episodes are executed: inline (`--workers 0`) or on Ray (env-worker actors and a batching
policy server), with retries, time limits and the order episodes are handed out in."""
