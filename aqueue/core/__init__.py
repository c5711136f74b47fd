"""aqueue's core: app, tasks, messages, results, the worker and the protocols brokers implement."""
