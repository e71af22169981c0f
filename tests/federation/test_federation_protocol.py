"""Three synthetic hospitals pooled through a folder: the round-based protocol reproduces R's pooled
coxph(Surv(t, e) ~ treated + strata(site), weights = w, robust = TRUE) to 1e-6, and the meta-analysis of
the sites' signed packages reproduces metafor::rma; sites cap rounds, refuse, and reject what is not
authentic, and the coordinator reports what it cannot pool."""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from analytics.cohort.concepts import load_concept_map
from analytics.cohort.params import RuleParams
from federation.aggregate import aggregates_name, collect_packages, heterogeneity_table, meta_table, site_estimates
from federation.canonical import canonical_bytes, parse
from federation.consortium import ConsortiumError, load_consortium
from federation.contract import contract_digest, contract_terms
from federation.exchange import ExchangeError, FsspecExchange, LocalDirectoryExchange, exchange_from_url
from federation.package import build_site_package
from federation.protocol import COORDINATOR, Coordinator, SiteNode, SitePolicy, reply_name, request_name, result_name
from federation.schema import SCHEMA_VERSION
from federation.signing import Signer, public_pem
from federation.verify import verify_document
from tests.paths import FIXTURES
from tests.pooling_sites import SITES, site_tables

REF = json.loads((FIXTURES / "pooling" / "reference.json").read_text())
FITS = [(c, o) for c in REF["comparisons"] for o in ("death", "relapse", "resp_relapse")]
TOL = 1e-6
SIGNERS = {p: Signer(p, Ed25519PrivateKey.generate()) for p in (*SITES, COORDINATOR)}
SITE_KEYS = {s: SIGNERS[s].key.public_key() for s in SITES}
DIGEST = contract_digest()


def network(tmp_path: Path, policies: dict[str, SitePolicy] | None = None, digests: dict[str, str] | None = None):
    exchange = LocalDirectoryExchange(tmp_path / "exchange")
    coordinator = Coordinator(exchange, SIGNERS[COORDINATOR], SITE_KEYS, DIGEST, tmp_path / "coordinator")
    sites = {s: SiteNode(s, exchange, SIGNERS[s], SIGNERS[COORDINATOR].key.public_key(), (digests or {}).get(s, DIGEST),
                         site_tables(s), tmp_path / f"site-{s}", (policies or {}).get(s, SitePolicy())) for s in SITES}
    return exchange, coordinator, sites


def run(coordinator: Coordinator, sites: dict[str, SiteNode], session: str, fits=FITS, max_turns: int = 60) -> dict:
    coordinator.start(session, list(sites), fits)
    for _ in range(max_turns):
        for site in sites.values():
            site.handle_pending()
        state = coordinator.poll(session)
        if state["status"] != "running":
            return state
    raise AssertionError("the session did not finish")


def test_three_sites_pooled_through_a_folder_equal_coxph_strata(tmp_path):
    exchange, coordinator, sites = network(tmp_path)
    state = run(coordinator, sites, "pooled-2026")
    assert state["status"] == "done"
    coordinator_key = {COORDINATOR: SIGNERS[COORDINATOR].key.public_key()}
    result = verify_document(exchange.get(result_name("pooled-2026")), "pooled_result", coordinator_key,
                             expected_signer=COORDINATOR, expected_digest=DIGEST)
    for comparison, outcome in FITS:
        got = result["fits"][f"{comparison}.{outcome}"]["result"]
        ref = REF["comparisons"][comparison]["outcomes"][outcome]["pooled"]
        for key in ("coef", "robust_se", "se", "hazard_ratio", "ci_lower", "ci_upper", "p_value", "loglik"):
            assert got[key] == pytest.approx(ref[key], abs=TOL, rel=TOL), (comparison, outcome, key)
        assert got["iterations"] == ref["iterations"] and got["n_sites"] == 3
    # Rounds: the slowest fit's Newton rounds plus its variance round; every site answered each one once.
    assert result["rounds"] == max(REF["comparisons"][c]["outcomes"][o]["pooled"]["iterations"] for c, o in FITS) + 2
    for s, node in sites.items():
        ledger = node.ledger("pooled-2026")["rounds"]
        assert len(ledger) == result["rounds"] and all(r["outcome"] == "answered" for r in ledger.values())
        assert exchange.exists(reply_name("pooled-2026", 1, s))


def test_each_request_says_what_it_will_learn_and_the_site_sees_what_it_sent(tmp_path):
    exchange, coordinator, sites = network(tmp_path)
    coordinator.start("s1", list(sites), FITS[:1])
    request = parse(exchange.get(request_name("s1", 1)))["payload"]
    assert "log partial likelihood, score and information" in request["reveals"] and "cap the rounds" in request["reveals"]
    handled = sites["north"].handle_pending()
    assert [h.outcome for h in handled] == ["answered"]
    assert handled[0].reveals == request["reveals"]
    assert set(handled[0].sent["tacrolimus_vs_conventional.death"]) == {"loglik", "score", "information"}
    assert sites["north"].handle_pending() == []  # answered once


def test_a_site_caps_the_rounds_it_answers(tmp_path):
    _, coordinator, sites = network(tmp_path, policies={"south": SitePolicy(max_rounds=2)})
    state = run(coordinator, sites, "capped")
    assert state["status"] == "failed"
    assert "south refused round 3" in state["reason"] and "round cap reached" in state["reason"]
    assert all(f["result"] is None and "round cap" in f["reason"] for f in state["fits"].values())
    result = verify_document(coordinator.exchange.get(result_name("capped")), "pooled_result",
                             {COORDINATOR: SIGNERS[COORDINATOR].key.public_key()})
    assert all(f["result"] is None and "round cap" in f["reason"] for f in result["fits"].values())  # reported, not pooled


def test_a_data_engineer_can_refuse_a_request(tmp_path):
    def engineer(request):
        return "not approved by the site's data engineer" if any(i["ask"] == "meat" for i in request["items"]) else None

    _, coordinator, sites = network(tmp_path, policies={"central": SitePolicy(approve=engineer)})
    state = run(coordinator, sites, "gated", fits=FITS[:1])
    assert state["status"] == "failed" and "central refused" in state["reason"] and "data engineer" in state["reason"]


def test_a_fit_with_a_small_arm_at_a_site_is_refused_and_not_pooled(tmp_path):
    _, coordinator, sites = network(tmp_path, policies={"north": SitePolicy(min_arm=40)})  # north has 35 CTX patients
    state = run(coordinator, sites, "small-arm")
    assert state["status"] == "done"
    ctx = state["fits"]["tacrolimus_vs_CTX.death"]
    assert ctx["phase"] == "failed" and ctx["reason"] == "north refused: an arm has fewer than 40 patients at this site"
    assert state["fits"]["tacrolimus_vs_conventional.death"]["phase"] == "done"


def test_a_site_refuses_a_beta_where_its_likelihood_overflows(tmp_path):
    exchange, _, sites = network(tmp_path)
    payload = {"schema_version": SCHEMA_VERSION, "kind": "round_request", "session_id": "far", "round": 1, "contract_digest": DIGEST,
               "sites": list(SITES), "reveals": "terms", "items": [{"fit_id": "c.death", "comparison": "tacrolimus_vs_conventional",
                                                                   "outcome": "death", "ask": "terms", "beta": [1e6]}]}
    exchange.put(request_name("far", 1), canonical_bytes(SIGNERS[COORDINATOR].sign(payload)))
    handled = sites["north"].handle_pending()[0]
    assert handled.outcome == "answered" and not handled.sent
    reply = parse(exchange.get(reply_name("far", 1, "north")))["payload"]
    assert reply["answers"][0]["refused"].startswith("the likelihood is not finite")


def test_a_site_under_another_contract_refuses_with_the_reason(tmp_path):
    other = contract_digest(contract_terms(RuleParams(followup_days=730)))
    _, coordinator, sites = network(tmp_path, digests={"central": other})
    state = run(coordinator, sites, "contracts", fits=FITS[:1])
    assert state["status"] == "failed" and "central" in state["reason"] and "contract_digest" in state["reason"]


def test_a_request_not_signed_by_the_coordinator_is_not_answered(tmp_path):
    exchange, _, sites = network(tmp_path)
    impostor = Signer(COORDINATOR, Ed25519PrivateKey.generate())
    payload = {"schema_version": SCHEMA_VERSION, "kind": "round_request", "session_id": "probe", "round": 1, "contract_digest": DIGEST,
               "sites": list(SITES), "reveals": "nothing", "items": [{"fit_id": "x.death", "comparison": "tacrolimus_vs_conventional",
                                                                     "outcome": "death", "ask": "terms", "beta": [0.3]}]}
    exchange.put(request_name("probe", 1), canonical_bytes(impostor.sign(payload)))
    handled = sites["north"].handle_pending()
    assert handled[0].outcome == "rejected" and "bad_signature" in handled[0].reason
    assert not exchange.exists(reply_name("probe", 1, "north"))
    assert sites["north"].handle_pending() == []  # recorded, not retried


def test_a_tampered_reply_fails_the_session_with_the_reason(tmp_path):
    exchange, coordinator, sites = network(tmp_path)
    coordinator.start("t1", list(sites), FITS[:1])
    for site in sites.values():
        site.handle_pending()
    path = exchange.root / reply_name("t1", 1, "south")
    envelope = parse(path.read_bytes())
    envelope["payload"]["answers"][0]["terms"]["score"][0] += 1.0
    path.write_bytes(canonical_bytes(envelope))
    state = coordinator.poll("t1")
    assert state["status"] == "failed" and "reply of south" in state["reason"] and "bad_signature" in state["reason"]


def test_a_site_that_lost_its_ledger_does_not_answer_twice(tmp_path):
    exchange, coordinator, sites = network(tmp_path)
    coordinator.start("l1", list(sites), FITS[:1])
    sites["north"].handle_pending()
    for f in (tmp_path / "site-north").glob("*.json"):
        f.unlink()
    again = sites["north"].handle_pending()
    assert [h.outcome for h in again] == ["already_answered"]
    assert sites["north"].ledger("l1")["rounds"]["1"]["outcome"] == "answered"  # still counts toward the cap


def test_the_coordinator_waits_for_every_site(tmp_path):
    _, coordinator, sites = network(tmp_path)
    coordinator.start("w1", list(sites), FITS[:1])
    sites["north"].handle_pending()
    assert coordinator.waiting_for("w1") == ["central", "south"]
    assert coordinator.poll("w1")["round"] == 1


# ---- meta-analysis of the sites' packages --------------------------------------------------------------------

def publish(exchange, site: str, terms=None) -> None:
    payload = build_site_package(site, site_tables(site), terms=terms or contract_terms(), concepts=load_concept_map(),
                                 data_cutoff=date(2026, 1, 1))
    exchange.put(aggregates_name(site), canonical_bytes(SIGNERS[site].sign(payload)), overwrite=True)


def test_meta_analysis_of_the_sites_packages_equals_metafor(tmp_path):
    exchange, _, _ = network(tmp_path)
    for s in SITES:
        publish(exchange, s)
    collected = collect_packages(exchange, SITE_KEYS, DIGEST)
    assert set(collected.accepted) == set(SITES) and not collected.rejected
    table = meta_table(site_estimates(collected.accepted)).set_index(["comparison", "outcome", "method", "test"])
    pairs = 0
    for comparison, outcome in FITS:
        # A site whose package withholds its estimate (a suppressed event count) is not in the meta-analysis:
        # R's reference for the sites that publish one.
        ref_fit = REF["comparisons"][comparison]["outcomes"][outcome]
        publishing = sorted(s for s in SITES if collected.accepted[s]["comparisons"][comparison]["outcomes"][outcome]["estimate"])
        refs = ref_fit["meta"] if len(publishing) == 3 else ref_fit["meta_of_pairs"][",".join(publishing)]
        pairs += len(publishing) == 2
        for key, ref in refs.items():
            if key == "REML_exact_z":
                continue
            method, test = key.split("_")
            row = table.loc[(comparison, outcome, method, test)]
            assert row["k"] == len(publishing) and row["sites"] == ",".join(publishing)
            for field in ("estimate", "se", "ci_lower", "ci_upper", "p_value", "q", "i2", "tau2"):
                assert row[field] == pytest.approx(ref[field], abs=TOL, rel=TOL), (comparison, outcome, key, field)
            if method != "FE":
                assert (row["pi_lower"], row["pi_upper"]) == pytest.approx((ref["pi_lower"], ref["pi_upper"]), abs=TOL)
    assert 0 < pairs < len(FITS)
    het = heterogeneity_table(site_estimates(collected.accepted))
    one = het[(het["comparison"] == "tacrolimus_vs_CTX") & (het["outcome"] == "resp_relapse")]
    assert (one["z_residual"] ** 2).sum() == pytest.approx(one["q"].iloc[0], rel=1e-12)
    assert one["weight_fe"].sum() == pytest.approx(1) and one["weight_re"].sum() == pytest.approx(1)


def test_a_site_with_another_contract_is_reported_not_pooled(tmp_path):
    exchange, _, _ = network(tmp_path)
    publish(exchange, "north")
    publish(exchange, "central")
    publish(exchange, "south", terms=contract_terms(RuleParams(followup_days=730)))
    collected = collect_packages(exchange, SITE_KEYS, DIGEST)
    assert set(collected.accepted) == {"north", "central"}
    code, reason = collected.rejected["aggregates/south.json"]
    assert code == "contract_digest" and "expected" in reason
    table = meta_table(site_estimates(collected.accepted))
    assert table["k"].max() == 2 and all(set(s.split(",")) <= {"central", "north"} for s in table["sites"] if s)
    main = table[table["comparison"] == "tacrolimus_vs_conventional"]
    assert (main["k"] == 2).all() and main["note"].isna().all()


def test_a_site_cut_off_at_another_date_is_reported_when_the_consortium_names_one(tmp_path):
    exchange, _, _ = network(tmp_path)
    for s in SITES:
        publish(exchange, s)  # cut off at 2026-01-01
    assert not collect_packages(exchange, SITE_KEYS, DIGEST).rejected  # the consortium names no cut-off
    collected = collect_packages(exchange, SITE_KEYS, DIGEST, data_cutoff=date(2025, 7, 1))
    assert not collected.accepted and {code for code, _ in collected.rejected.values()} == {"data_cutoff"}
    assert "2025-07-01" in collected.rejected["aggregates/north.json"][1]
    keys = tmp_path / "consortium.yaml"
    pem = "coordinator: |\n  " + public_pem(SIGNERS[COORDINATOR].key).replace("\n", "\n  ") + "\nsites: {}\n"
    keys.write_text(pem + "data_cutoff: 2025-07-01\n")
    assert load_consortium(keys).data_cutoff == date(2025, 7, 1)
    keys.write_text(pem + "data_cutoff: pt-000123\n")
    with pytest.raises(ConsortiumError, match="data_cutoff must be a date"):
        load_consortium(keys)


# ---- the exchange ---------------------------------------------------------------------------------------------

def test_local_exchange_is_write_once_and_keeps_names_inside_its_root(tmp_path):
    ex = exchange_from_url(str(tmp_path / "x"))
    ex.put("a/b.json", b"1")
    assert ex.get("a/b.json") == b"1" and ex.list() == ["a/b.json"] and ex.list("a") == ["a/b.json"]
    with pytest.raises(ExchangeError, match="write-once"):
        ex.put("a/b.json", b"2")
    ex.put("a/b.json", b"2", overwrite=True)
    assert ex.get("a/b.json") == b"2"
    for bad in ("../up.json", "/abs.json", "a/../../b", "a//b", ""):
        with pytest.raises(ExchangeError):
            ex.put(bad, b"x")
    assert isinstance(exchange_from_url(f"file://{tmp_path / 'y'}"), LocalDirectoryExchange)


def test_fsspec_exchange_creates_the_folders_a_file_system_needs(tmp_path):
    """Unlike an object store, a file system (file://, sftp://) needs a name's parent folders before a write."""
    ex = FsspecExchange(f"file://{tmp_path / 'exchange'}")
    ex.put("sessions/s/round-001/request.json", b"r")
    ex.put("aggregates/north.json", b"n")
    assert (tmp_path / "exchange" / "sessions" / "s" / "round-001" / "request.json").read_bytes() == b"r"
    assert ex.list() == ["aggregates/north.json", "sessions/s/round-001/request.json"]
    assert ex.get("aggregates/north.json") == b"n"


def test_fsspec_exchange_has_the_same_behaviour(tmp_path):
    ex = exchange_from_url("memory://federation-test")
    assert isinstance(ex, FsspecExchange)
    ex.put("sessions/s/round-001/request.json", b"r")
    ex.put("aggregates/north.json", b"n")
    assert ex.list("aggregates") == ["aggregates/north.json"]
    assert ex.list() == ["aggregates/north.json", "sessions/s/round-001/request.json"]
    assert ex.get("aggregates/north.json") == b"n" and ex.exists("aggregates/north.json")
    with pytest.raises(ExchangeError, match="write-once"):
        ex.put("aggregates/north.json", b"again")
