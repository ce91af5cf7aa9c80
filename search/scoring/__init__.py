"""How a candidate network is scored, the search's objective: zero-cost proxies and #params (`proxies`),
or trained accuracy on real data (`accuracy`, which trains with `training` on a `data` set)."""
