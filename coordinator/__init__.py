"""The consortium coordinator's Dagster code location: verifies the sites' packages, meta-analyses their own
estimates, and runs the round-based exact pooled Cox model (federation/). Holds no patient data."""
