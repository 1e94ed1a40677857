"""Load benchmark of the skiprec service: ``skiprec bench`` (see docs/BENCHMARKS.md)."""
