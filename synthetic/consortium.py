"""Three synthetic hospitals in a consortium (`make federation-demo` and tests/federation/test_three_hospitals.py).

Each hospital differs in size, case mix and in how its clinicians choose tacrolimus (its own propensity
model, synthetic/hospital.py TreatmentPropensity), and its baseline hazards differ: what a stratified model
with site strata is for. Each is ingested by the real pipeline from its own NDJSON export
(FHIR_SYNC_MODE=ndjson) into its own SQLite warehouse, with its own Dagster instance, ledger and key; it
publishes its signed package and answers the coordinator's rounds through one local exchange folder. The
coordinator, with an instance and warehouse of its own, materializes site_packages, meta_analysis,
site_heterogeneity and pooled_effects. Nothing but the exchange folder is shared.

The sites' runs are the site assets and jobs themselves (assets/federation.py), executed in process against
each site's own instance: what each site's daemon would launch from its sensor, without three daemons.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import dagster as dg
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from analytics.comparisons import OUTCOMES
from assets.definitions import all_assets
from assets.federation import FederationResource, answer_round_job, round_requests, site_aggregates
from assets.resources import FhirServerResource, StudyResource, WarehouseResource
from coordinator.assets import REPORT_FILE, consortium_meta, pooled_effects, pooled_report
from coordinator.definitions import advance_round_job, pooling_rounds, start_pooling_session_job
from coordinator.resources import CoordinatorResource
from etl.warehouse import Warehouse
from federation.signing import public_pem

from .demo import PROJECT_ROOT
from .hospital import HospitalParams, TreatmentPropensity, generate_hospital
from .load import write_ndjson


@dataclass(frozen=True)
class DemoSite:
    site_id: str
    params: HospitalParams
    pseudonym_key: str = field(repr=False, default="")   # a fixed demo key: the warehouse's row order is reproducible


def _site(site_id: str, seed: int, n: int, **kwargs: Any) -> DemoSite:
    return DemoSite(site_id, HospitalParams(seed=seed, n_retrospective=n, n_prospective_enrolled=4, n_noise=20,
                                            attrition_per_reason=1, **kwargs), f"demo-pseudonym-key-{site_id}-0123456789")


# A small young centre that gives tacrolimus mostly to amyopathic patients; a mid-sized one close to the
# default hospital; a larger, older referral centre that treats the sicker patients with tacrolimus far more
# often and sees more deaths.
SITES = (
    _site("north", 1102, 75, mean_age=46.0, subset_mix=(0.55, 0.15, 0.20, 0.10), death_12m_reference=0.15,
          propensity=TreatmentPropensity(intercept=-1.2, age_per_year=0.02, cadm=1.8, ivig=0.4, plasma_exchange=0.3)),
    _site("central", 2207, 105, mean_age=52.0, subset_mix=(0.40, 0.15, 0.25, 0.20), relapse_12m_reference=0.5,
          propensity=TreatmentPropensity(intercept=-0.9, age_per_year=0.03, cadm=1.0, ivig=1.1, female=0.0)),
    _site("south", 3304, 145, mean_age=58.0, subset_mix=(0.30, 0.10, 0.30, 0.30), death_12m_reference=0.3,
          propensity=TreatmentPropensity(intercept=-0.5, age_per_year=0.06, cadm=0.9, pred_per_mg=0.03, ivig=0.7,
                                         plasma_exchange=1.2)),
)
SITE_IDS = tuple(s.site_id for s in SITES)
# The federation's part of the site pipeline: site_aggregates and what it reads (FHIR ingest, cohort, weights).
SITE_SELECTION = dg.AssetSelection.assets(site_aggregates).upstream().required_multi_asset_neighbors()
SESSION = "demo"


def private_pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def key_env(party: str) -> str:
    """The variable naming a party's private key (each site reads only its own)."""
    return f"FEDERATION_KEY_{party.upper()}"


@dataclass
class Consortium:
    """The demo's parties on disk under ``root``: one directory per site and one for the coordinator, the shared
    exchange folder and the consortium's public-key list."""

    root: Path
    sites: tuple[DemoSite, ...] = SITES

    @property
    def exchange(self) -> Path:
        return self.root / "exchange"

    @property
    def key_list(self) -> Path:
        return self.root / "consortium.yaml"

    def site_dir(self, site: str) -> Path:
        return self.root / site

    def warehouse_url(self, party: str) -> str:
        return f"sqlite:///{self.root / party / 'warehouse.sqlite'}"

    def dagster_home(self, party: str) -> Path:
        home = self.root / party / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            config.write_text("telemetry:\n  enabled: false\n")
        return home

    def instance(self, party: str) -> dg.DagsterInstance:
        """The party's own Dagster instance (its DAGSTER_HOME): its runs are what its UI shows."""
        return dg.DagsterInstance.from_config(str(self.dagster_home(party)))

    def make_keys(self) -> dict[str, str]:
        """A key pair per party: the private key in the party's directory (0600), the public keys in the
        consortium's list. Returns each party's key variable (FEDERATION_KEY_<PARTY>) and key file: set them in
        the environment of the processes that sign (each site reads only its own)."""
        public, environment = {}, {}
        for party in (*[s.site_id for s in self.sites], "coordinator"):
            path = self.root / party / "signing_key.pem"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():  # created 0600: never readable by others, not even for a moment
                with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
                    out.write(private_pem(Ed25519PrivateKey.generate()))
            environment[key_env(party)] = str(path)
            public[party] = public_pem(serialization.load_pem_private_key(path.read_bytes(), password=None))  # type: ignore[arg-type]
        self.key_list.write_text(yaml.safe_dump({"coordinator": public.pop("coordinator"), "sites": public}))
        return environment

    def site_resources(self, site: DemoSite) -> dict[str, dg.ConfigurableResource]:
        """The site's settings, as its environment would give them (FHIR_SYNC_MODE=ndjson, FHIR_NDJSON_DIR, ...)."""
        d = self.site_dir(site.site_id)
        return {"fhir": FhirServerResource(sync_mode="ndjson", ndjson_dir=str(d / "ndjson")),
                "warehouse": WarehouseResource(url=self.warehouse_url(site.site_id)),
                "study": StudyResource(pseudonym_key=site.pseudonym_key, bootstrap_replicates=0, figures_dir=str(d / "figures")),
                "federation": FederationResource(site_id=site.site_id, exchange=str(self.exchange), consortium=str(self.key_list),
                                                 signing_key_env=key_env(site.site_id), auto_answer=True,
                                                 state_dir=str(d / "federation"))}

    def coordinator_resources(self) -> dict[str, dg.ConfigurableResource]:
        d = self.root / "coordinator"
        return {"coordinator": CoordinatorResource(exchange=str(self.exchange), consortium=str(self.key_list),
                                                   signing_key_env=key_env("coordinator"), state_dir=str(d),
                                                   figures_dir=str(d / "figures")),
                "warehouse": WarehouseResource(url=self.warehouse_url("coordinator"))}

    # ---- the site side ---------------------------------------------------------------------------------------
    def export_hospital(self, site: DemoSite) -> int:
        """The hospital's FHIR export (NDJSON, one file per type, as a Bulk Data export writes it)."""
        hospital = generate_hospital(site.params)
        write_ndjson(hospital, self.site_dir(site.site_id) / "ndjson")
        return len(hospital.resources)

    def build_site(self, site: DemoSite) -> dg.ExecuteInProcessResult:
        """The site's pipeline, FHIR export to signed package, in its own instance and warehouse."""
        with self.instance(site.site_id) as instance:
            return dg.materialize([*all_assets, site_aggregates], selection=SITE_SELECTION, instance=instance,
                                  resources=self.site_resources(site))

    def answer_pending(self, site: DemoSite) -> int:
        """One tick of the site's round_requests sensor, and the runs it requests (what its daemon would launch)."""
        resources = self.site_resources(site)
        requests = round_requests(dg.build_sensor_context(resources={"federation": resources["federation"]}))
        if isinstance(requests, dg.SkipReason):
            return 0
        with self.instance(site.site_id) as instance:
            for request in requests:
                answer_round_job.execute_in_process(run_config=request.run_config, resources=resources, instance=instance)
        return len(requests)

    # ---- the coordinator side --------------------------------------------------------------------------------
    def meta_analyse(self) -> dg.ExecuteInProcessResult:
        with self.instance("coordinator") as instance:
            return dg.materialize([consortium_meta], instance=instance, resources=self.coordinator_resources())

    def start_session(self, fits: Iterable[str], session: str = SESSION) -> None:
        with self.instance("coordinator") as instance:
            start_pooling_session_job.execute_in_process(
                run_config={"ops": {"start_session": {"config": {"session_id": session, "fits": list(fits)}}}},
                resources=self.coordinator_resources(), instance=instance)

    def coordinator_tick(self) -> bool:
        """One tick of the coordinator's pooling_rounds sensor and its runs; True once pooled_effects is written."""
        resources = self.coordinator_resources()
        requests = pooling_rounds(dg.build_sensor_context(resources=resources))
        if isinstance(requests, dg.SkipReason):
            return False
        with self.instance("coordinator") as instance:
            for request in requests:
                if request.job_name == "pooled_effects_job":
                    dg.materialize([pooled_effects, pooled_report], resources=resources, instance=instance)
                else:
                    advance_round_job.execute_in_process(run_config=request.run_config, resources=resources, instance=instance)
        return any(r.job_name == "pooled_effects_job" for r in requests)

    def run_session(self, fits: Iterable[str], session: str = SESSION, max_ticks: int = 40) -> int:
        """Start a session and tick both ends' sensors until the coordinator writes pooled_effects; the ticks taken."""
        self.start_session(fits, session)
        for tick in range(1, max_ticks + 1):
            for site in self.sites:
                self.answer_pending(site)
            if self.coordinator_tick():
                return tick
        raise RuntimeError(f"session {session} did not finish in {max_ticks} ticks")


def _build(root: str, site: DemoSite) -> bool:
    return Consortium(Path(root)).build_site(site).success


def build_sites(consortium: Consortium, workers: int = 2) -> dict[str, bool]:
    """Every site's pipeline, each in a process of its own (hospitals run side by side; spawned, so no Dagster
    state is shared). The processes inherit this one's environment, with the sites' key variables."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {s.site_id: pool.submit(_build, str(consortium.root), s) for s in consortium.sites}
        return {site: f.result() for site, f in futures.items()}


def fits_for(comparisons: Iterable[str]) -> list[str]:
    return [f"{c}.{o}" for c in comparisons for o in OUTCOMES]


# The comparisons the demo pools: every site has at least five patients in each arm and a propensity model.
# (The MTX and AZA pairs are a dozen conventional patients per site: the sites would answer, but a pooled
# estimate over propensity models that nearly separate says little.)
POOLED_COMPARISONS = ("tacrolimus_vs_conventional", "tacrolimus_vs_CTX")


def pooled_summary(consortium: Consortium) -> str:
    """The coordinator's tables, as `make federation-demo` prints them."""
    wh = Warehouse(consortium.warehouse_url("coordinator"))
    packages = wh.read_table("site_packages")
    pooled = wh.read_table("pooled_effects")
    meta = wh.read_table("meta_analysis")
    meta = meta[meta["test"] == "z"].set_index(["comparison", "outcome", "method"])
    lines = ["site packages: " + ", ".join(f"{r.site_id} {r.status}" for r in packages.itertuples(index=False)), "",
             "exact pooled IPTW Cox, strata(site), robust SE  |  meta-analysis of the sites' own estimates",
             f"{'comparison':<27} {'outcome':<13} {'pooled HR (95% CI)':<22} {'p':>7}  {'FE HR':>6} {'REML HR (95% CI)':<22} {'I2':>5}"]
    for r in pooled.itertuples(index=False):
        if r.status != "pooled":
            lines.append(f"{r.comparison:<27} {r.outcome:<13} not pooled: {r.reason}")
            continue
        fe, reml = meta.loc[(r.comparison, r.outcome, "FE")], meta.loc[(r.comparison, r.outcome, "REML")]
        lines.append(f"{r.comparison:<27} {r.outcome:<13} {r.hazard_ratio:.3f} ({r.ci_lower:.3f}-{r.ci_upper:.3f})"
                     f"{'':<2} {r.p_value:>7.4f}  {fe['hazard_ratio']:>6.3f} {reml['hazard_ratio']:.3f} "
                     f"({reml['hr_ci_lower']:.3f}-{reml['hr_ci_upper']:.3f})  {reml['i2']:>5.1f}"
                     + (f"  pools {r.sites} only" if r.n_sites < (packages["status"] == "accepted").sum() else ""))
    left_out = pooled["left_out"].dropna().unique() if "left_out" in pooled else []
    lines += [f"left out of the session: {text}" for text in left_out]
    lines.append(f"\n{int(pooled['rounds'].iloc[0])} rounds; every request and reply in {consortium.exchange}")
    lines.append(f"the coordinator's report: {consortium.coordinator_resources()['coordinator'].reports() / REPORT_FILE}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=PROJECT_ROOT / ".state")
    args = parser.parse_args(argv)
    root = args.state_dir / "federation"
    shutil.rmtree(root, ignore_errors=True)  # a fresh consortium each run: re-runs are identical
    consortium = Consortium(root)
    os.environ.update(consortium.make_keys())
    for site in consortium.sites:
        n = consortium.export_hospital(site)
        print(f"{site.site_id}: synthetic hospital, {n} FHIR resources (NDJSON in {consortium.site_dir(site.site_id) / 'ndjson'})")
    print("each site: FHIR NDJSON -> warehouse -> cohort, IPTW -> signed package (its own Dagster instance) ...")
    built = build_sites(consortium)
    if not all(built.values()):
        print(f"a site's pipeline failed: {built} (its runs are in <site>/dagster_home)")
        return 1
    for site in consortium.sites:
        cohort = Warehouse(consortium.warehouse_url(site.site_id)).read_table("cohort")
        print(f"  {site.site_id}: cohort of {len(cohort)} ({(cohort['group'] == 'tacrolimus').sum()} on tacrolimus)")
    consortium.meta_analyse()
    ticks = consortium.run_session(fits_for(POOLED_COMPARISONS))
    print(f"coordinator: session {SESSION!r} finished after {ticks} sensor ticks at each end\n")
    print(pooled_summary(consortium))
    print(f"\nsee a party's runs: DAGSTER_HOME={root}/<north|central|south|coordinator>/dagster_home dagster dev "
          "-w workspace.coordinator.yaml (or workspace.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
