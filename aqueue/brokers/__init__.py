"""Brokers, one module each, chosen by URL scheme (see ``aqueue.core.urls``)."""
