"""The coordinator's tables: every site package verified or reported (``site_packages``), the meta-analysis of
the sites' own estimates (``meta_analysis``, with a forest plot per comparison and outcome), each site's
weight and deviation (``site_heterogeneity``), and the exact pooled stratified Cox model of every finished
round-based session (``pooled_effects``, with the sites each fit pooled and the sites left out, and why), and the
pooled section of the study report as the coordinator's own HTML page (``pooled_report``)."""

import base64
import hashlib
import os
from datetime import datetime, timezone

import dagster as dg
import pandas as pd

from analytics.pooling.forest import forest_plot
from assets.metadata import table_metadata
from assets.resources import WarehouseResource
from federation.aggregate import HETEROGENEITY_COLUMNS, META_COLUMNS, collect_packages, heterogeneity_table, meta_table, site_estimates
from federation.protocol import COORDINATOR, result_name
from federation.verify import PackageRejected, verify_document
from report.pooled import POOLED_TABLES
from report.render import render_pooled_page

from .resources import CoordinatorResource

GROUP = "consortium"
PACKAGE_COLUMNS = ["document", "site_id", "status", "code", "reason", "contract_digest", "data_cutoff",
                   "extends_default_concept_map", "withheld_cells", "created_at"]
POOLED_COLUMNS = ["session_id", "started_at", "comparison", "outcome", "status", "hazard_ratio", "ci_lower", "ci_upper", "p_value", "coef",
                  "robust_se", "se", "iterations", "n_sites", "warning", "sites", "rounds", "reason", "left_out"]
REPORT_FILE = "pooled_report.html"

_META_TABLES = {
    "site_packages": "Every site package in the exchange: accepted, or rejected with the reason (a tampered or unsigned "
                     "package, another schema version, a site under another contract: reported, not pooled).",
    "meta_analysis": "Meta-analysis of the accepted sites' own primary IPTW estimates per comparison and outcome: fixed "
                     "effect, DerSimonian-Laird and REML, with z or Hartung-Knapp inference; Q, I², tau², prediction "
                     "interval (equal to metafor::rma).",
    "site_heterogeneity": "Each site's weight in the fixed-effect and REML pools and its standardized deviation from the "
                          "fixed-effect estimate (squares add up to Cochran's Q).",
}


def _image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


@dg.multi_asset(specs=[dg.AssetSpec(name, description=desc, group_name=GROUP, kinds={"sql", "python"})
                       for name, desc in _META_TABLES.items()])
def consortium_meta(context: dg.AssetExecutionContext, coordinator: CoordinatorResource, warehouse: WarehouseResource):
    consortium = coordinator.key_list()
    collected = collect_packages(coordinator.open_exchange(), consortium.site_keys, coordinator.digest(),
                                 data_cutoff=consortium.data_cutoff)
    rows = [{"document": f"aggregates/{site}.json", "site_id": site, "status": "accepted", "code": None, "reason": None,
             "contract_digest": p["contract"]["digest"], "data_cutoff": p["contract"]["data_cutoff"],
             "extends_default_concept_map": int(p["contract"]["concept_map"]["extends_default"]),
             "withheld_cells": len(p["suppression"]["withheld"]), "created_at": p["created_at"]}
            for site, p in collected.accepted.items()]
    rows += [{"document": doc, "site_id": doc.removeprefix("aggregates/").removesuffix(".json"), "status": "rejected",
              "code": code, "reason": reason} for doc, (code, reason) in collected.rejected.items()]
    packages = pd.DataFrame(rows, columns=PACKAGE_COLUMNS)
    estimates = site_estimates(collected.accepted)
    meta = meta_table(estimates)
    heterogeneity = heterogeneity_table(estimates)
    wh = warehouse.get()
    for name, frame in (("site_packages", packages), ("meta_analysis", meta), ("site_heterogeneity", heterogeneity)):
        wh.replace_table(name, frame)
    if collected.rejected:
        context.log.warning(f"{len(collected.rejected)} package(s) not pooled: "
                            + "; ".join(f"{d}: {c}" for d, (c, _) in collected.rejected.items()))
    figures = coordinator.figures()
    figures.mkdir(parents=True, exist_ok=True)
    plots = []
    for (comparison, outcome), g in estimates.groupby(["comparison", "outcome"], sort=False):
        g = g.dropna(subset=["log_hr"])
        if len(g) < 2:
            continue
        png = forest_plot(list(g["site_id"]), g["log_hr"], g["robust_se"], f"{comparison.replace('_', ' ')}: {outcome}")
        (figures / f"forest_{comparison}_{outcome}.png").write_bytes(png)
        if comparison == "tacrolimus_vs_conventional":
            plots.append(_image(png, f"{comparison} {outcome}"))
    yield dg.MaterializeResult(asset_key="site_packages", metadata={
        **table_metadata(packages, preview=True), "accepted": len(collected.accepted), "rejected": len(collected.rejected)})
    yield dg.MaterializeResult(asset_key="meta_analysis", metadata={
        **table_metadata(meta, preview=True), "forest_plots": dg.MetadataValue.md("\n\n".join(plots)),
        "figures": dg.MetadataValue.path(str(figures))})
    yield dg.MaterializeResult(asset_key="site_heterogeneity", metadata=table_metadata(heterogeneity, preview=True))


@dg.asset(group_name=GROUP, kinds={"sql", "python"})
def pooled_effects(context: dg.AssetExecutionContext, coordinator: CoordinatorResource, warehouse: WarehouseResource):
    """The exact pooled IPTW hazard ratios: the stratified Cox model with one stratum per site (each site's own
    propensity model), fitted by rounds without pooling any patient row; equal to R's
    coxph(Surv(t, e) ~ treated + strata(site), weights = w, robust = TRUE) on the pooled rows. ``sites``: the
    sites a fit pooled; ``left_out``: the sites the session left out, each with its reason ("site: reason; ...");
    ``started_at``: when the coordinator began the session (its own state; the report shows the latest by it)."""
    exchange = coordinator.open_exchange()
    trusted = {COORDINATOR: coordinator.key_list().coordinator_key}
    rows = []
    sessions = coordinator.coordinator()
    for session in sessions.sessions():
        if not exchange.exists(result_name(session)):
            continue
        try:
            result = verify_document(exchange.get(result_name(session)), "pooled_result", trusted, expected_signer=COORDINATOR)
        except PackageRejected as exc:
            context.log.warning(f"session {session}: result not used ({exc})")
            continue
        left_out = "; ".join(f"{site}: {reason}" for site, reason in sorted(result["left_out"].items())) or None
        if left_out:
            context.log.warning(f"session {session}: {len(result['left_out'])} site(s) left out: {', '.join(sorted(result['left_out']))}")
        for fit in result["fits"].values():
            r = fit["result"] or {}
            rows.append({"session_id": session, "started_at": sessions.state(session).get("started_at"),
                         "comparison": fit["comparison"], "outcome": fit["outcome"],
                         "status": "pooled" if fit["result"] else "not pooled", **{k: r.get(k) for k in POOLED_COLUMNS if k in r},
                         "sites": ",".join(fit["sites"]), "rounds": result["rounds"], "reason": fit["reason"],
                         "left_out": left_out})
    frame = pd.DataFrame(rows, columns=POOLED_COLUMNS)
    warehouse.get().replace_table("pooled_effects", frame)
    return dg.MaterializeResult(metadata=table_metadata(frame, preview=True))


@dg.asset(group_name=GROUP, kinds={"html"}, deps=[pooled_effects, "meta_analysis", "site_heterogeneity"])
def pooled_report(context: dg.AssetExecutionContext, coordinator: CoordinatorResource, warehouse: WarehouseResource):
    """The pooled section of the study report as the coordinator's own self-contained HTML page (under
    COORDINATOR_REPORTS_DIR): the latest session's exact stratified hazard ratios, the meta-analysis and a forest
    plot per comparison and outcome; every number names the coordinator table it was read from."""
    wh = warehouse.get()
    empty = {"meta_analysis": META_COLUMNS, "site_heterogeneity": HETEROGENEITY_COLUMNS, "pooled_effects": POOLED_COLUMNS}
    # Before the first meta-analysis (or the first session) the page shows what there is.
    tables = {name: wh.read_table(name) if wh.has_table(name) else pd.DataFrame(columns=empty[name]) for name in POOLED_TABLES}
    html = render_pooled_page(tables, generated_at=datetime.now(timezone.utc))
    if html is None:
        raise dg.Failure("no pooled results yet: materialize pooled_effects after a session, or the meta-analysis "
                         "(consortium_meta) after the sites publish their packages")
    directory = coordinator.reports()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REPORT_FILE
    data = html.encode("utf-8")
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    context.log.info(f"pooled report written to {path} ({len(data)} bytes)")
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(path)), "size_bytes": len(data),
                                          "sha256": hashlib.sha256(data).hexdigest(),
                                          "link": dg.MetadataValue.url(path.resolve().as_uri())})
