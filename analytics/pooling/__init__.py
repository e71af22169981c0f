"""Statistics for pooling the study across hospitals that keep their patient rows.

Two ways, both pure (no I/O): the exact stratified IPTW Cox model fitted in rounds from the sites'
per-stratum sums (``stratified_cox``), and the meta-analysis of the sites' own estimates (``meta``).
"""
