"""aqueue's side-by-side benchmark harness (not part of the aqueue package).

``python -m benchmarks setup`` creates ``.bench-venv/`` with every peer installed;
``python -m benchmarks run`` runs the scenarios. See docs/benchmarks.md.
"""
