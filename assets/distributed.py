"""The same definitions on a distributed executor, for a hospital that outgrows one machine.

``dagster_celery``'s executor sends each step to Celery workers (on any number of machines) through
a broker (Redis here). Nothing in the assets changes: they already keep their data in the
warehouse and their runs in the Dagster instance, which every worker reaches. Load this module
instead of ``assets.definitions`` (``dagster-webserver -m assets.distributed``) and run
``study_job_celery``; see the README's operations guide.
"""

import dagster as dg
from dagster_celery import celery_executor

from .definitions import defs as local_defs

celery = celery_executor.configured(
    {"broker": {"env": "DAGSTER_CELERY_BROKER"}, "backend": {"env": "DAGSTER_CELERY_BACKEND"}},
    name="celery_redis",
)

study_job_celery = dg.define_asset_job(
    "study_job_celery", selection=dg.AssetSelection.all(), executor_def=celery,
    description="study_job, with every step executed by a Celery worker.")

defs = dg.Definitions.merge(local_defs, dg.Definitions(jobs=[study_job_celery]))


def celery_study_job() -> dg.JobDefinition:
    """The resolved job, for ``dg.reconstructable`` (workers rebuild it from this module)."""
    return defs.resolve_job_def("study_job_celery")
