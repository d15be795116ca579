"""Policies behind a socket, both directions: `remote` evaluates a policy served elsewhere,
`server` serves ours (the `serve` command); `wire` is the shared message format and
`policy_server` the Ray actor that batches the env workers' requests."""
