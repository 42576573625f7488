"""The 2D detector-free matcher: network (net), matching (match), world coordinates (world), QA (qa),
and its synthetic pretraining data (sources, procedural, families, pairs). docs/matcher.md describes it."""
