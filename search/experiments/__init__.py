"""Experiments about the search, not the search itself: each asks a question of it and writes a report.

- `validate` (+ `validate_report`, `evidence`): how well does a zero-cost proxy or #params rank trained accuracy?
- `compare` (+ `compare_arms_report`, `shared_cache`; the family from search.scaled): the search against random
  search and a scaled Container-Light, at several budgets, the winners trained (`evidence`) and re-measured;
  `--arms search,random` is the search against random search alone (the `compare-random` command is that alias).
- `predictor_report`: what the latency predictor's gate saves and what it costs.
- `repeat` (+ `repeat_report`): does a seeded search reproduce, run twice on one machine?

They use the product (search.study, search.latency, search.scoring) and nothing in the product uses them.
"""
