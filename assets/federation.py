"""The site's side of multi-site pooling (federation/): the signed aggregate package, and the answers to
the coordinator's rounds, each request one run a data engineer can see and refuse.

Merged into the site's Definitions only when FEDERATION_EXCHANGE is set (``federation_definitions``), so a
hospital that is not in a consortium has nothing to configure and ``--select '*'`` is unchanged."""

from pathlib import Path

import dagster as dg
import pandas as pd

from analytics.comparisons import OUTCOMES
from federation.aggregate import aggregates_name
from federation.canonical import canonical_bytes
from federation.consortium import Consortium, load_consortium
from federation.contract import contract_digest, contract_terms
from federation.exchange import Exchange, exchange_from_url
from federation.package import SiteTables, build_site_package, sign_package
from federation.protocol import SiteNode, SitePolicy, pending_requests, read_request, waiting_message
from federation.signing import Signer, signing_key_from_env
from federation.suppression import DEFAULT_THRESHOLD
from federation.verify import PackageRejected

from .resources import STATE_DIR, StudyResource, WarehouseResource, env, federation_configured
from .study.provenance import git_commit, package_version

FEDERATION_GROUP = "federation"
SITE_TABLES = ("cohort", "cohort_attrition", "iptw_weights", "covariate_balance")


class FederationResource(dg.ConfigurableResource):
    """This site in a consortium: its id, where packages travel, its signing key (named, not held) and the
    limits it answers within. See the README's multi-site section."""

    site_id: str
    exchange: str                                   # FEDERATION_EXCHANGE: a folder, file://, s3://, sftp://
    consortium: str                                 # FEDERATION_CONSORTIUM: the consortium's public-key list
    signing_key_env: str = "FEDERATION_SIGNING_KEY"  # the *name* of the variable holding the private key
    suppression_threshold: int = DEFAULT_THRESHOLD
    max_rounds: int = 25                            # per session
    max_evaluations: int = SitePolicy.max_evaluations           # fits × rounds per session
    max_sessions: int = SitePolicy.max_sessions                 # sessions answered per window (from the ledger)
    session_window_days: float = SitePolicy.session_window_days
    min_arm: int = DEFAULT_THRESHOLD
    auto_answer: bool = False                       # False: each request waits for the data engineer
    state_dir: str = ""                             # the site's ledger of rounds answered; empty = <state dir>/federation

    def open_exchange(self) -> Exchange:
        return exchange_from_url(self.exchange)

    def signer(self) -> Signer:
        return Signer(self.site_id, signing_key_from_env(self.signing_key_env))

    def key_list(self) -> Consortium:
        return load_consortium(self.consortium)

    def ledger_dir(self) -> Path:
        return Path(self.state_dir or STATE_DIR / "federation") / "ledger"


def _params(study: StudyResource, warehouse: WarehouseResource):
    extracted = warehouse.get().extraction_time()
    return study.retrospective_params((extracted or pd.Timestamp.now(tz="UTC")).date())


def _digest(study: StudyResource) -> str:
    """The contract this site works under (its own settings; the data cut-off is not part of it)."""
    return contract_digest(contract_terms(study.retrospective_params(pd.Timestamp.now(tz="UTC").date())))


def _site_tables(warehouse: WarehouseResource) -> SiteTables:
    wh = warehouse.get()
    return SiteTables(*(wh.read_table(name) for name in SITE_TABLES))


@dg.asset(group_name=FEDERATION_GROUP, kinds={"json"}, deps=list(SITE_TABLES))
def site_aggregates(context: dg.AssetExecutionContext, warehouse: WarehouseResource, study: StudyResource,
                    federation: FederationResource) -> dg.MaterializeResult:
    """The signed package of this site's aggregates for the consortium: group sizes, events, its own primary
    IPTW estimates (log HR, robust SE) per comparison and outcome, covariate balance and attrition, with small
    cells withheld. No patient row, pseudonym, FHIR id or date leaves in it."""
    params = _params(study, warehouse)
    terms = contract_terms(params)
    payload = build_site_package(federation.site_id, _site_tables(warehouse), terms=terms, concepts=study.concepts(),
                                 data_cutoff=params.data_cutoff, threshold=federation.suppression_threshold,
                                 software={"package_version": package_version(), "git_commit": git_commit()})
    pinned = federation.key_list().contract_digest
    if pinned and pinned != payload["contract"]["digest"]:
        context.log.warning(f"this site's contract digest {payload['contract']['digest'][:12]}… differs from the "
                            f"consortium's {pinned[:12]}…: the coordinator will report the package, not pool it")
    name = aggregates_name(federation.site_id)
    federation.open_exchange().put(name, canonical_bytes(sign_package(payload, federation.signer())), overwrite=True)
    rows = []
    for c, v in payload["comparisons"].items():
        for o in OUTCOMES:
            out, est = v["outcomes"][o], v["outcomes"][o]["estimate"] or {}
            rows.append({"comparison": c, "outcome": o, "n_treated": v["n_treated"], "n_control": v["n_control"],
                         "events_treated": out["events_treated"], "events_control": out["events_control"],
                         "log_hr": est.get("log_hr"), "robust_se": est.get("robust_se"), "note": out["note"]})
    return dg.MaterializeResult(metadata={
        "document": name, "contract_digest": payload["contract"]["digest"],
        "withheld_cells": len(payload["suppression"]["withheld"]), "suppression_threshold": federation.suppression_threshold,
        "what_leaves_the_site": dg.MetadataValue.md(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))})


class AnswerConfig(dg.Config):
    request: str                                      # the request's name in the exchange
    decision: str = "answer"                          # answer | refuse
    reason: str = "refused by the site's data engineer"


@dg.op(description="Verify one round request from the coordinator and answer it (or refuse, with the reason).")
def answer_round(context: dg.OpExecutionContext, config: AnswerConfig, warehouse: WarehouseResource, study: StudyResource,
                 federation: FederationResource) -> dict:
    if config.decision not in ("answer", "refuse"):
        raise dg.Failure(f"decision must be 'answer' or 'refuse', not {config.decision!r}")
    consortium = federation.key_list()
    policy = SitePolicy(max_rounds=federation.max_rounds, min_arm=federation.min_arm,
                        approve=None if config.decision == "answer" else (lambda _request: config.reason),
                        max_evaluations=federation.max_evaluations, max_sessions=federation.max_sessions,
                        session_window_days=federation.session_window_days,
                        suppression_threshold=federation.suppression_threshold)
    node = SiteNode(federation.site_id, federation.open_exchange(), federation.signer(), consortium.coordinator_key,
                    _digest(study), lambda: _site_tables(warehouse), federation.ledger_dir(), policy,
                    consortium_sites=consortium.sites)
    try:  # what the request would reveal, in this run's log before the site answers it
        context.log.info(f"{config.request} reveals: {read_request(node.exchange, config.request, consortium.coordinator_key)['reveals']}")
    except PackageRejected:
        pass   # handle() rejects it with the reason below
    handled = node.handle(config.request)
    context.log.info(f"{config.request}: {handled.outcome}" + (f" ({handled.reason})" if handled.reason else ""))
    for fit_id, why in handled.not_answered.items():   # the words stay here; the reply carries only a code
        context.log.info(f"{fit_id} not answered: {why}")
    context.add_output_metadata({"outcome": handled.outcome, "reason": handled.reason or "", "code": handled.code or "",
                                 "not_answered": dg.MetadataValue.json(handled.not_answered),
                                 "reveals": dg.MetadataValue.md(handled.reveals or ""),
                                 "sent": dg.MetadataValue.json(handled.sent)})
    if handled.outcome == "rejected":
        raise dg.Failure(f"request rejected: {handled.reason}")
    return {"outcome": handled.outcome, "reason": handled.reason}


@dg.job(description="Answer (or refuse) one pooling round request; started by the round_requests sensor, or from the "
                    "launchpad with decision 'answer' or 'refuse' when the site answers by hand.")
def answer_round_job():
    answer_round()


@dg.sensor(job=answer_round_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Watches the exchange for the coordinator's round requests. With auto_answer each request becomes "
                       "a run; without, it lists them (and what each would reveal) for the data engineer to launch.")
def round_requests(context: dg.SensorEvaluationContext, federation: FederationResource):
    pending = pending_requests(federation.open_exchange(), federation.ledger_dir())
    if not pending:
        return dg.SkipReason("no round request waiting")
    if not federation.auto_answer:
        exchange = federation.open_exchange()
        return dg.SkipReason(waiting_message(exchange, pending, federation.key_list().coordinator_key))
    return [dg.RunRequest(run_key=name, run_config={"ops": {"answer_round": {"config": {"request": name}}}}) for name in pending]


def federation_resource_from_env() -> FederationResource:
    return FederationResource(
        site_id=env("FEDERATION_SITE_ID", ""), exchange=env("FEDERATION_EXCHANGE", ""),
        consortium=env("FEDERATION_CONSORTIUM", ""), signing_key_env=env("FEDERATION_SIGNING_KEY_ENV", "FEDERATION_SIGNING_KEY"),
        suppression_threshold=int(env("FEDERATION_SUPPRESSION_THRESHOLD", str(DEFAULT_THRESHOLD))),
        max_rounds=int(env("FEDERATION_MAX_ROUNDS", "25")), min_arm=int(env("FEDERATION_MIN_ARM", str(DEFAULT_THRESHOLD))),
        max_evaluations=int(env("FEDERATION_MAX_EVALUATIONS", str(SitePolicy.max_evaluations))),
        max_sessions=int(env("FEDERATION_MAX_SESSIONS", str(SitePolicy.max_sessions))),
        session_window_days=float(env("FEDERATION_SESSION_WINDOW_DAYS", str(SitePolicy.session_window_days))),
        auto_answer=env("FEDERATION_AUTO_ANSWER", "false").lower() in ("1", "true", "yes"),
        state_dir=env("FEDERATION_STATE_DIR", ""))


def federation_definitions() -> dg.Definitions:
    """The site's federation assets, job and sensor; empty when FEDERATION_EXCHANGE is not set."""
    if not federation_configured():
        return dg.Definitions()
    return dg.Definitions(assets=[site_aggregates], jobs=[answer_round_job], sensors=[round_requests],
                          resources={"federation": federation_resource_from_env()})
