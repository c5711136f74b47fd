"""Remote-control figures: ping round trips and how fast a fleet-wide rate limit takes hold
(``python -m benchmarks.fleet``, docs/fleet.md "Figures")."""
