"""Integrations with web frameworks; the core never imports these."""
