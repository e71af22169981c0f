"""The three committed synthetic sites (tests/fixtures/pooling) as the warehouse tables a deployment would hold:
``cohort`` with pseudonymous patient keys, an attrition flowchart, and the ``iptw_weights`` and
``covariate_balance`` of analytics.comparisons.study_results (each site's own propensity models)."""
from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from pathlib import Path

import pandas as pd

from analytics.cohort.retrospective import ATTRITION_REASONS, attrition_table
from analytics.comparisons import study_results
from federation.package import SiteTables

HERE = Path(__file__).resolve().parent / "fixtures" / "pooling"
SITES = ("north", "central", "south")


@lru_cache(maxsize=None)
def site_tables(site: str) -> SiteTables:
    cohort = pd.read_csv(HERE / f"site_{site}.csv", keep_default_na=False)
    cohort["conventional_agent"] = cohort["conventional_agent"].replace("", None)
    keys = [hashlib.sha256(f"{site}/{i}".encode()).hexdigest() for i in range(len(cohort))]
    cohort.insert(0, "patient_key", keys)
    # A flowchart: each reason excludes a few patients (some below the suppression threshold).
    reasons = pd.Series([r for i, r in enumerate(ATTRITION_REASONS) for _ in range((i * 7 + len(site)) % 9)])
    attrition = attrition_table("retrospective", len(cohort) + len(reasons), reasons, ATTRITION_REASONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small sites' MTX and AZA propensity models nearly separate
        results = study_results(cohort)
    return SiteTables(cohort, attrition, results.iptw_weights, results.covariate_balance)


# Central's package withholds its own CTX estimates of death and respiratory relapse (an event count under the
# threshold, or withheld to protect one): it answers "withheld" for those fits, which pool north and south only.
WITHHELD_BY = {("tacrolimus_vs_CTX", "death"): "central", ("tacrolimus_vs_CTX", "resp_relapse"): "central"}


def pooled_reference(reference: dict, comparison: str, outcome: str) -> tuple[list[str], dict]:
    """The sites a fit pools in a session of the three sites, and R's coxph(... strata(site)) on exactly their rows
    (reference.json)."""
    ref = reference["comparisons"][comparison]["outcomes"][outcome]
    left = WITHHELD_BY.get((comparison, outcome))
    if left is None:
        return sorted(SITES), ref["pooled"]
    pair = sorted(s for s in SITES if s != left)
    return pair, ref["pooled_of_pairs"][",".join(pair)]


# The three synthetic FHIR hospitals of `make federation-demo` (synthetic/consortium.py): their analysis rows.
DEMO_ROWS = HERE / "demo_rows.csv"
DEMO_REFERENCE = HERE / "demo_reference.json"
ROW_COLUMNS = ["comparison", "outcome", "site", "t", "e", "treat", "w"]


def demo_analysis_rows(warehouse_urls: dict[str, str], comparisons: tuple[str, ...]) -> pd.DataFrame:
    """Per comparison × outcome, every site's rows as its Cox model sees them (t, e, treat and its own IPTW weight
    w), read from the site's warehouse the way federation/site.py reads them; sorted, so the order of rows in a
    table plays no part."""
    from analytics.comparisons import OUTCOMES
    from etl.warehouse import Warehouse
    from federation.site import comparison_rows, outcome_rows

    parts = []
    for site, url in warehouse_urls.items():
        wh = Warehouse(url)
        cohort, weights = wh.read_table("cohort"), wh.read_table("iptw_weights")
        for comparison in comparisons:
            rows = comparison_rows(cohort, weights, comparison)
            for outcome in OUTCOMES:
                t, e, treat, w = outcome_rows(rows, outcome).arrays()
                parts.append(pd.DataFrame({"comparison": comparison, "outcome": outcome, "site": site, "t": t, "e": e,
                                           "treat": treat, "w": w}))
    return pd.concat(parts, ignore_index=True).sort_values(ROW_COLUMNS, ignore_index=True)
