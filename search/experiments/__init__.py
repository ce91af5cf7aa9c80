"""Experiments about the search, not the search itself: each asks a question of it and writes a report.

- `validate` (+ `validate_report`, `evidence`): how well does a zero-cost proxy or #params rank trained accuracy?
- `compare_random` (+ `compare_report`): the search's winners against random search's, trained.
- `compare` (+ `compare_arms_report`, `scaled`): the search against random search and a scaled Container-Light, at
  several budgets, the winners trained and re-measured.
- `predictor_report`: what the latency predictor's gate saves and what it costs.
- `repeat` (+ `repeat_report`): does a seeded search reproduce, run twice on one machine?

They use the product (search.study, search.latency, search.scoring) and nothing in the product uses them.
"""
