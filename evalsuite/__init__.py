"""The evaluation harness: suites, episode plans, the Ray runner, the run store, tables, videos, CLI."""
