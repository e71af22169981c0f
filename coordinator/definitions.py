"""The coordinator's Definitions (a code location of its own: ``workspace.coordinator.yaml`` alone, or beside a
site's in ``workspace.consortium.yaml``). Sessions are started from the launchpad; sensors advance them as
the sites reply, and refresh the meta-analysis when a site publishes a new package."""

import hashlib
from typing import Optional

import dagster as dg

from federation.aggregate import AGGREGATES, collect_packages, unpooled_sites
from federation.protocol import DEFAULT_FITS

from .assets import consortium_meta, pooled_effects, pooled_report
from .resources import CoordinatorResource, coordinator_resources_from_env


class StartConfig(dg.Config):
    session_id: str
    sites: list[str] = []           # empty: every site in the consortium's key list
    fits: list[str] = []            # "comparison.outcome"; empty: every comparison and outcome of the contract
    round_deadline_hours: Optional[float] = None   # None: the coordinator's FEDERATION_ROUND_DEADLINE_HOURS


@dg.op(description="Open a pooling session over the sites whose package is accepted (the others are left out and "
                   "named, with the reason): write round 1's signed request (every fit's terms at beta = 0).")
def start_session(context: dg.OpExecutionContext, config: StartConfig, coordinator: CoordinatorResource) -> None:
    fits = [tuple(f.split(".", 1)) for f in config.fits] or list(DEFAULT_FITS)
    consortium = coordinator.key_list()
    sites = config.sites or consortium.sites
    packages = collect_packages(coordinator.open_exchange(), consortium.site_keys, coordinator.digest(),
                                data_cutoff=consortium.data_cutoff)
    state = coordinator.coordinator().start(config.session_id, sites, fits, left_out=unpooled_sites(packages, sites),
                                            round_deadline_hours=config.round_deadline_hours)
    for site, reason in state["left_out"].items():
        context.log.warning(f"session {config.session_id}: {site} left out: {reason}")
    if state["status"] == "running":
        context.log.info(f"session {config.session_id}: round 1 requested from {', '.join(state['sites'])} for {len(fits)} fits")
    else:
        context.log.warning(f"session {config.session_id}: {state['reason']}")


class RoundConfig(dg.Config):
    session_id: str


@dg.op(description="Verify every site's reply to the current round, take each fit's next Newton step, and write the "
                   "next request or the signed result.")
def advance_round(context: dg.OpExecutionContext, config: RoundConfig, coordinator: CoordinatorResource) -> None:
    state = coordinator.coordinator().poll(config.session_id)
    context.log.info(f"session {config.session_id}: {state['status']}, round {state['round']}"
                     + (f" ({state['reason']})" if state["reason"] else ""))


@dg.job(description="Start a round-based pooling session over the consortium's sites.")
def start_pooling_session_job():
    start_session()


@dg.job(description="Advance a pooling session by one round (started by the pooling_rounds sensor).")
def advance_round_job():
    advance_round()


pooled_effects_job = dg.define_asset_job("pooled_effects_job", selection=[pooled_effects, pooled_report])
consortium_meta_job = dg.define_asset_job("consortium_meta_job", selection=dg.AssetSelection.assets(consortium_meta))


@dg.sensor(jobs=[advance_round_job, pooled_effects_job], minimum_interval_seconds=30,
           description="When every site has replied to a session's current round, or its deadline has passed, advance "
                       "it; when a session ends, refresh pooled_effects and pooled_report.")
def pooling_rounds(context: dg.SensorEvaluationContext, coordinator: CoordinatorResource):
    node = coordinator.coordinator()
    requests = []
    for session in node.sessions():
        state = node.state(session)
        if state["status"] == "running" and (not node.waiting_for(session) or node.overdue(session)):
            late = "/deadline" if node.waiting_for(session) else ""
            requests.append(dg.RunRequest(run_key=f"{session}/round-{state['round']:03d}{late}", job_name="advance_round_job",
                                          run_config={"ops": {"advance_round": {"config": {"session_id": session}}}}))
        elif state["status"] != "running":
            requests.append(dg.RunRequest(run_key=f"{session}/{state['status']}", job_name="pooled_effects_job"))
    return requests or dg.SkipReason("no session has a complete or overdue round")


@dg.sensor(job=consortium_meta_job, minimum_interval_seconds=60,
           description="Refresh the meta-analysis when a site publishes or replaces its package.")
def site_packages_changed(context: dg.SensorEvaluationContext, coordinator: CoordinatorResource):
    exchange = coordinator.open_exchange()
    digest = hashlib.sha256()
    for name in exchange.list(AGGREGATES):
        digest.update(name.encode() + hashlib.sha256(exchange.get(name)).digest())
    cursor = digest.hexdigest()
    if cursor == context.cursor:
        return dg.SkipReason("no package changed")
    context.update_cursor(cursor)
    return dg.RunRequest(run_key=cursor)


defs = dg.Definitions(assets=[consortium_meta, pooled_effects, pooled_report], jobs=[start_pooling_session_job, advance_round_job,
                                                                      pooled_effects_job, consortium_meta_job],
                      sensors=[pooling_rounds, site_packages_changed], resources=coordinator_resources_from_env())
