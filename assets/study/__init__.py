"""The study side: the cohort, comparative effects and descriptive tables (each a multi-asset over the
catalog's tables, with their expectation checks in the same step), and the publishing helper they share."""
import dagster as dg

from .cohort import cohort
from .effects import comparative_effects
from .summaries import descriptive_tables


def definitions() -> dg.Definitions:
    return dg.Definitions(assets=[cohort, comparative_effects, descriptive_tables])
