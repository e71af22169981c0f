"""Analyst-facing views over the study tables: the published numbers without the bookkeeping.

Written as portable SQL (SQLite and PostgreSQL); recreated after the tables they read are
written, so a changed column list never leaves a stale view behind."""
from __future__ import annotations

from etl.warehouse import Warehouse

VIEWS: dict[str, tuple[tuple[str, ...], str]] = {
    # name: (tables it reads, SELECT)
    "v_primary_effects": (("effect_estimates",), """
        SELECT comparison, outcome, hazard_ratio, ci_lower, ci_upper, logrank_p, logrank_p_svy, n_treated, n_control
        FROM effect_estimates WHERE analysis = 'primary'"""),
    "v_cohort_groups": (("cohort",), """
        SELECT "group", COUNT(*) AS n, AVG(age) AS mean_age, SUM(death_event) AS deaths, SUM(relapse_event) AS relapses
        FROM cohort GROUP BY "group\""""),
    "current_provenance": (("provenance",), """
        SELECT p.* FROM provenance p
        WHERE p.computed_at = (SELECT MAX(q.computed_at) FROM provenance q WHERE q.table_name = p.table_name)"""),
}


def refresh_views(wh: Warehouse, written: set[str]) -> list[str]:
    """(Re)create every view whose tables all exist and one of which was just written."""
    made = []
    for name, (reads, select) in VIEWS.items():
        if not written & set(reads) or not all(wh.has_table(t) for t in reads):
            continue
        wh.execute_script([f'DROP VIEW IF EXISTS "{name}"', f'CREATE VIEW "{name}" AS {select.strip()}'])
        made.append(name)
    return made
