"""The coordinator's settings, from the environment (see the README's multi-site section)."""
from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg

from analytics.cohort.params import RuleParams
from assets.resources import STATE_DIR, WarehouseResource, env
from federation.consortium import Consortium, load_consortium
from federation.contract import contract_digest, contract_terms
from federation.exchange import Exchange, exchange_from_url
from federation.protocol import COORDINATOR, DEFAULT_ROUND_DEADLINE_HOURS, Coordinator
from federation.signing import Signer, signing_key_from_env

DEFAULT_COORDINATOR_WAREHOUSE = f"sqlite:///{STATE_DIR / 'coordinator.sqlite'}"


class CoordinatorResource(dg.ConfigurableResource):
    """Where packages travel, the consortium's public keys, the coordinator's own key (named, not held), and
    the contract it pools under: the consortium's pinned digest, else the default contract with these windows."""

    exchange: str
    consortium: str
    signing_key_env: str = "FEDERATION_SIGNING_KEY"
    state_dir: str = ""            # the sessions' Newton states; empty = <state dir>/coordinator
    window_start: str = "2014-01-01"
    window_end: str = "2020-09-30"
    figures_dir: str = ""          # empty = <state dir>/coordinator/figures
    reports_dir: str = ""          # pooled_report's HTML; empty = <state dir>/coordinator/reports
    round_deadline_hours: float = DEFAULT_ROUND_DEADLINE_HOURS   # how long a round waits for every site

    def key_list(self) -> Consortium:
        return load_consortium(self.consortium)

    def open_exchange(self) -> Exchange:
        return exchange_from_url(self.exchange)

    def digest(self) -> str:
        pinned = self.key_list().contract_digest
        params = RuleParams(window_start=date.fromisoformat(self.window_start), window_end=date.fromisoformat(self.window_end))
        return pinned or contract_digest(contract_terms(params))

    def base_dir(self) -> Path:
        return Path(self.state_dir or STATE_DIR / "coordinator")

    def figures(self) -> Path:
        return Path(self.figures_dir or self.base_dir() / "figures")

    def reports(self) -> Path:
        return Path(self.reports_dir or self.base_dir() / "reports")

    def coordinator(self) -> Coordinator:
        keys = self.key_list()
        return Coordinator(self.open_exchange(), Signer(COORDINATOR, signing_key_from_env(self.signing_key_env)), keys.site_keys,
                           self.digest(), self.base_dir() / "sessions", round_deadline_hours=self.round_deadline_hours)


def coordinator_resources_from_env() -> dict[str, dg.ConfigurableResource]:
    return {
        "coordinator": CoordinatorResource(
            exchange=env("FEDERATION_EXCHANGE", ""), consortium=env("FEDERATION_CONSORTIUM", ""),
            signing_key_env=env("FEDERATION_SIGNING_KEY_ENV", "FEDERATION_SIGNING_KEY"),
            state_dir=env("COORDINATOR_STATE_DIR", ""), window_start=env("STUDY_WINDOW_START", "2014-01-01"),
            window_end=env("STUDY_WINDOW_END", "2020-09-30"), figures_dir=env("COORDINATOR_FIGURES_DIR", ""),
            reports_dir=env("COORDINATOR_REPORTS_DIR", ""),
            round_deadline_hours=float(env("FEDERATION_ROUND_DEADLINE_HOURS", str(DEFAULT_ROUND_DEADLINE_HOURS)))),
        "warehouse": WarehouseResource(url=env("COORDINATOR_WAREHOUSE_URL", DEFAULT_COORDINATOR_WAREHOUSE)),
    }
