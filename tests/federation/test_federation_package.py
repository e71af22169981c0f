"""The site package: aggregates only, small cells withheld, signed, and rejected with a clear reason when it is
tampered with, unsigned, of another schema version or made under another contract."""
from __future__ import annotations

import copy
import json
import math
import re
from datetime import date, datetime, timezone

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from analytics.cohort.concepts import load_concept_map
from analytics.cohort.facts import build_facts
from analytics.cohort.params import RuleParams
from analytics.cohort.tables import derive_cohort_tables
from analytics.comparisons import study_results
from analytics.propensity import design_matrix
from analytics.pseudonym import pseudonymise
from etl.fhir.types import flatten_all
from federation.canonical import canonical_bytes
from federation.contract import contract_digest, contract_terms
from federation.package import SiteTables, build_site_package, sign_package, withheld_estimates
from federation.schema import NOTES
from federation.signing import Signer
from federation.site import comparison_rows
from federation.suppression import suppress
from federation.verify import PackageRejected, verify_document
from synthetic.hospital import HospitalParams, generate_hospital
from tests.pooling_sites import site_tables

KEY = "a-test-pseudonym-key-of-some-length"
CUTOFF = date(2026, 1, 1)
SIGNERS = {s: Signer(s, Ed25519PrivateKey.generate()) for s in ("north", "central", "south", "coordinator")}
TRUSTED = {s: signer.key.public_key() for s, signer in SIGNERS.items()}
DIGEST = contract_digest()


def package_of(site: str, tables: SiteTables, **kw) -> dict:
    return build_site_package(site, tables, terms=kw.pop("terms", contract_terms()), concepts=load_concept_map(),
                              data_cutoff=CUTOFF, created_at=datetime(2026, 3, 1, tzinfo=timezone.utc), **kw)


def signed_bytes(payload: dict, signer: str | None = None) -> bytes:
    return canonical_bytes(SIGNERS[signer or payload["site_id"]].sign(payload))


# ---- small-cell suppression --------------------------------------------------------------------------------

def test_small_counts_are_withheld_and_zero_is_not():
    published, withheld = suppress({"a": 0, "b": 4, "c": 5, "d": 120}, threshold=5)
    assert published == {"a": 0, "b": None, "c": 5, "d": 120}
    assert withheld == {"b"}


def test_a_sum_does_not_give_a_withheld_cell_back():
    counts = {"total": 30, "x": 3, "y": 12, "z": 15}
    published, withheld = suppress(counts, [("total", ["x", "y", "z"])], threshold=5)
    assert published == {"total": 30, "x": None, "y": None, "z": 15}  # y, the smallest other part, goes too
    assert withheld == {"x", "y"}   # not labelled small or complementary: a label would point at x


def test_the_complementary_cell_is_never_a_zero_or_a_published_cell_under_the_threshold():
    """Withholding b = 0 beside a = 3 would leave a + b = 3 from the total: a is recoverable (b was known to be 0
    or tiny). The smallest part at least the threshold goes instead."""
    published, withheld = suppress({"total": 10, "a": 3, "b": 0, "c": 7}, [("total", ["a", "b", "c"])])
    assert published == {"total": 10, "a": None, "b": 0, "c": None} and withheld == {"a", "c"}



def test_complementary_suppression_follows_chains_of_sums():
    counts = {"n": 40, "a": 2, "b": 38, "b_again": 38, "b1": 30, "b2": 8}
    published, _ = suppress(counts, [("n", ["a", "b"]), ("b", ["b_again"]), ("b_again", ["b1", "b2"])], threshold=5)
    # a small -> b withheld -> its equal b_again withheld -> one of b1, b2 withheld (b2, the smaller)
    assert published == {"n": 40, "a": None, "b": None, "b_again": None, "b1": 30, "b2": None}


def test_an_unpublished_small_difference_withholds_a_published_cell():
    """conventional = CTX + MTX + AZA + (MMF and CsA, not published): if MMF + CsA is 3, publishing the other
    four would give it away."""
    counts = {"conventional": 50, "CTX": 20, "MTX": 15, "AZA": 12, "virtual.other": 3}
    published, withheld = suppress(counts, [("conventional", ["CTX", "MTX", "AZA", "virtual.other"])], threshold=5)
    assert withheld == {"virtual.other", "AZA"}


def test_threshold_is_configurable():
    assert suppress({"a": 7}, threshold=10)[0] == {"a": None}
    assert suppress({"a": 1}, threshold=1)[0] == {"a": 1}
    with pytest.raises(ValueError, match="at least 1"):
        suppress({"a": 1}, threshold=0)


# ---- the package from the synthetic hospital ------------------------------------------------------------

@pytest.fixture(scope="module")
def hospital_site():
    """The synthetic hospital's analysis frame, as the pipeline's cohort and study assets derive it."""
    hospital = generate_hospital(HospitalParams(seed=7, n_retrospective=80, n_prospective_enrolled=12, n_noise=25,
                                                attrition_per_reason=3))
    facts = build_facts(flatten_all(hospital.by_type()), load_concept_map())
    derived = derive_cohort_tables(facts, RuleParams(data_cutoff=CUTOFF))
    cohort = pseudonymise(derived.tables["cohort"], KEY)
    results = study_results(cohort, pseudonymise(derived.tables["prospective_cohort"], KEY))
    tables = SiteTables(cohort, derived.tables["cohort_attrition"], results.iptw_weights, results.covariate_balance)
    return hospital, derived, results, tables, package_of("north", tables)


def test_package_is_schema_valid_signed_and_verifies(hospital_site):
    payload = hospital_site[4]
    got = verify_document(signed_bytes(payload), "site_aggregates", TRUSTED, expected_digest=DIGEST)
    assert got == payload
    assert payload["contract"]["digest"] == DIGEST and payload["contract"]["concept_map"]["extends_default"] is False


def test_package_counts_and_estimates_are_the_sites_own(hospital_site):
    _, _, results, _, payload = hospital_site
    primary = results.effect_estimates[results.effect_estimates["analysis"] == "primary"].set_index(["comparison", "outcome"])
    checked = 0
    for name, comparison in payload["comparisons"].items():
        for outcome, o in comparison["outcomes"].items():
            row = primary.loc[(name, outcome)]
            for key, value in (("n_treated", comparison["n_treated"]), ("n_control", comparison["n_control"]),
                               ("events_treated", o["events_treated"]), ("events_control", o["events_control"])):
                assert value is None or value == row[key], (name, outcome, key)
            if o["estimate"] is not None:
                est = o["estimate"]
                z = 1.959963984540054
                assert math.exp(est["log_hr"]) == pytest.approx(row["hazard_ratio"], rel=1e-9)
                assert math.exp(est["log_hr"] - z * est["robust_se"]) == pytest.approx(row["ci_lower"], rel=1e-9)
                checked += 1
    assert checked >= 3


def test_every_small_count_in_the_package_is_withheld(hospital_site):
    payload = hospital_site[4]
    threshold = payload["suppression"]["threshold"]
    assert threshold == 5

    def counts(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                if k not in ("contract", "suppression", "software", "balance"):
                    yield from counts(v, f"{path}.{k}" if path else k)
        elif isinstance(node, int) and not isinstance(node, bool):
            yield path, node

    found = dict(counts(payload))
    assert found and all(n == 0 or n >= threshold for n in found.values())
    withheld = payload["suppression"]["withheld"]
    assert withheld and withheld == sorted(set(withheld))   # this hospital has small cells; no "small"/"complementary"
    assert all(k not in found for k in withheld)


def _binary_cells(tables: SiteTables, comparison: str) -> dict[str, tuple[int, int, int, int]]:
    """(with, without) in the treated arm and (with, without) in the control arm, for each indicator covariate."""
    rows = comparison_rows(tables.cohort, tables.iptw_weights, comparison)
    design = design_matrix(rows).drop(columns="const")
    arm = rows["treated"].to_numpy(dtype=bool)
    cells = {}
    for col in design.columns:
        x = design[col].to_numpy(dtype=float)
        if set(np.unique(x)) <= {0.0, 1.0}:
            a, b = int(x[arm].sum()), int(x[~arm].sum())
            cells[col] = (a, int(arm.sum()) - a, b, int((~arm).sum()) - b)
    return cells


def _packages():
    return [(s, site_tables(s), package_of(s, site_tables(s))) for s in ("north", "central", "south")]


def test_no_balance_row_rests_on_a_small_cell(hospital_site):
    """An SMD of an indicator is a function of its four cells and the published arm sizes: it is published only
    when every cell, zero included (a 0 next to an arm size says "no one" / "everyone"), reaches the threshold."""
    _, _, _, tables, payload = hospital_site
    checked = withheld = 0
    for site, t, p in [("hospital", tables, payload), *_packages()]:
        for name, c in p["comparisons"].items():
            if c["balance"] is None:
                continue
            cells = _binary_cells(t, name)
            for b in c["balance"]:
                if b["covariate"] in cells:
                    small = min(cells[b["covariate"]]) < p["suppression"]["threshold"]
                    if small:  # (a cell of another comparison's sum can withhold a large one too)
                        assert b["smd_unweighted"] is None and b["smd_weighted"] is None, (site, name, b, cells[b["covariate"]])
                    withheld += b["smd_unweighted"] is None
                    checked += b["smd_unweighted"] is not None
                else:  # a continuous covariate: one number from many patients per arm
                    assert b["smd_unweighted"] is not None and b["smd_weighted"] is not None
    assert checked and withheld


def _smd(a: int, nt: int, b: int, nc: int) -> float:
    p1, p0 = a / nt, b / nc
    sd = math.sqrt((p1 * (1 - p1) + p0 * (1 - p0)) / 2)
    return (p1 - p0) / sd if sd > 0 else 0.0


def test_no_published_smd_gives_back_a_small_cell():
    """The reviewer's attack (issue 18): solve the published SMD for the cells with the published arm sizes. No
    published SMD of the fixture sites has a unique solution with a cell under the threshold."""
    tried = 0
    for _, _, p in _packages():
        k = p["suppression"]["threshold"]
        for c in p["comparisons"].values():
            nt, nc = c["n_treated"], c["n_control"]
            for b in c["balance"] or []:
                if b["smd_unweighted"] is None or nt is None or nc is None:
                    continue
                sols = [(a, x) for a in range(nt + 1) for x in range(nc + 1) if abs(_smd(a, nt, x, nc) - b["smd_unweighted"]) < 1e-9]
                tried += 1
                assert not (len(sols) == 1 and min(sols[0][0], nt - sols[0][0], sols[0][1], nc - sols[0][1]) < k), (b, sols)
    assert tried > 10


def test_an_estimate_is_withheld_with_its_arms_event_count(hospital_site):
    """A site's log HR and robust SE are functions of the event counts among other things; when a count is
    withheld (small, or to protect a small one) the estimate of that outcome is withheld too."""
    seen = 0
    for p in [hospital_site[4], *(p for _, _, p in _packages())]:
        for c in p["comparisons"].values():
            for o in c["outcomes"].values():
                if o["events_treated"] is None or o["events_control"] is None:
                    seen += 1
                    assert o["estimate"] is None and o["note"] is not None
    assert seen


def _dates_in(resources) -> set[str]:
    return set(re.findall(r"\d{4}-\d{2}-\d{2}", json.dumps(resources)))


def test_leak_no_pseudonym_fhir_id_date_or_row_level_value_is_in_the_package(hospital_site):
    hospital, derived, results, tables, payload = hospital_site
    text = signed_bytes(payload).decode()
    pseudonyms = set(tables.cohort["patient_key"]) | set(results.iptw_weights["patient_key"])
    fhir_ids = {r["id"] for r in hospital.resources}
    patient_dates = _dates_in(hospital.resources) | {str(d) for d in derived.tables["cohort"]["index_date"]}
    assert pseudonyms and fhir_ids and len(patient_dates) > 100
    for secret in pseudonyms | fhir_ids:
        assert secret not in text
    # The only dates are public ones in their own fields: the contract's windows, the data cut-off and the
    # package's creation time. Outside those fields there is no date at all.
    public = {payload["contract"]["data_cutoff"], payload["created_at"][:10],
              *re.findall(r"\d{4}-\d{2}-\d{2}", json.dumps(payload["contract"]["terms"]))}
    assert set(re.findall(r"\d{4}-\d{2}-\d{2}", text)) <= public
    rest = {k: v for k, v in payload.items() if k not in ("contract", "created_at")}
    assert not re.findall(r"\d{4}-\d{2}-\d{2}", json.dumps(rest))
    assert not (patient_dates & set(re.findall(r"\d{4}-\d{2}-\d{2}", json.dumps(rest))))
    # No row-level number: no patient's propensity score, weight, age or dose is a number in the package.
    row_values = np.concatenate([results.iptw_weights[c].to_numpy(dtype=float)
                                 for c in ("propensity_score", "weight", "stabilized_weight")])
    row_values = row_values[np.abs(row_values - np.round(row_values)) > 1e-6]  # a weight of 1.0000000001 tells nothing
    numbers = np.array([float(v) for v in re.findall(r"(?<![\w.])-?\d+\.\d+(?:e-?\d+)?", json.dumps(rest))])
    assert len(numbers) > 20
    same = np.isclose(numbers[:, None], row_values[None, :], rtol=1e-9, atol=0)
    assert not same.any(), numbers[same.any(axis=1)]
    # Nor a patient's age, dose or day count: every integer is a count under its count's name, and no other number
    # is one of those values.
    cohort = tables.cohort
    row_numbers = np.unique(np.concatenate([cohort[c].to_numpy(dtype=float) for c in cohort.columns
                                            if c in ("age", "initial_pred_mg_day", "followup_days") or c.endswith("_days")]))
    assert len(row_numbers) > 50

    def numbers_in(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from numbers_in(v, f"{path}.{k}" if path else k)
        elif isinstance(node, list):
            for v in node:
                yield from numbers_in(v, path)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            yield path, node

    counts = re.compile(r"(^cohort\.(n|groups\.\w+)|^attrition\.\w+\.(screened|included|excluded\.\w+)"
                        r"|\.(n_treated|n_control|events_treated|events_control)|^suppression\.threshold)$")
    found = list(numbers_in(rest))
    assert found
    for path, value in found:
        if isinstance(value, int):
            assert counts.search(path), path
        else:
            assert not np.isclose(value, row_numbers, rtol=1e-12, atol=0).any(), (path, value)
    # The package's shape does not grow with the patients: the same keys for a site of 120 and one of 320.
    small, large = (package_of(s, site_tables(s)) for s in ("north", "south"))

    def shape(node):
        return {k: shape(v) for k, v in node.items()} if isinstance(node, dict) else type(node).__name__

    skeleton = lambda p: {k: v for k, v in shape(p).items() if k not in ("site_id", "suppression", "comparisons")}  # noqa: E731
    assert skeleton(small) == skeleton(large)
    assert len(json.dumps(large)) < 2 * len(json.dumps(small))


def test_package_of_a_site_that_extends_the_concept_map_keeps_the_contract(hospital_site, tmp_path):
    extra = tmp_path / "local.yaml"
    extra.write_text("domains:\n  ivig:\n    - {system: 'urn:hospital:drug', code: 'IVIG-10'}\n")
    tables = hospital_site[3]
    payload = build_site_package("north", tables, terms=contract_terms(), concepts=load_concept_map(str(extra)),
                                 data_cutoff=CUTOFF)
    assert payload["contract"]["digest"] == DIGEST
    assert payload["contract"]["concept_map"]["extends_default"] is True


# ---- rejections --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def payload():
    return package_of("central", site_tables("central"))


def rejected(data: bytes, **kw) -> PackageRejected:
    with pytest.raises(PackageRejected) as info:
        verify_document(data, "site_aggregates", TRUSTED, expected_digest=DIGEST, **kw)
    return info.value


def test_tampered_package_is_rejected(payload):
    envelope = SIGNERS["central"].sign(payload)
    envelope["payload"]["comparisons"]["tacrolimus_vs_conventional"]["outcomes"]["death"]["estimate"]["log_hr"] -= 0.1
    err = rejected(canonical_bytes(envelope))
    assert err.code == "bad_signature" and "changed after signing" in err.reason


def test_unsigned_package_is_rejected(payload):
    envelope = SIGNERS["central"].sign(payload)
    del envelope["signature"]
    assert rejected(canonical_bytes(envelope)).code == "unsigned"
    assert rejected(canonical_bytes(payload)).code == "malformed"  # a bare payload is not an envelope


def test_wrong_schema_version_is_rejected(payload):
    old = {**payload, "schema_version": "0.9"}
    err = rejected(signed_bytes(old))
    assert err.code == "schema_version" and "'0.9'" in err.reason


def test_mismatched_contract_digest_is_rejected(payload):
    terms = contract_terms(RuleParams(followup_days=730))
    other = package_of("central", site_tables("central"), terms=terms)
    err = rejected(signed_bytes(other))
    assert err.code == "contract_digest" and "expected" in err.reason
    # Terms edited without updating the digest are caught as well.
    forged = copy.deepcopy(payload)
    forged["contract"]["terms"]["retrospective_rules"]["followup_days"] = 730
    assert rejected(signed_bytes(forged)).code == "contract_digest"


def test_package_signed_by_another_site_or_an_unknown_key_is_rejected(payload):
    err = rejected(signed_bytes(payload, signer="north"))
    assert err.code == "bad_signature" and "'north'" in err.reason
    stranger = Signer("central", Ed25519PrivateKey.generate())
    assert rejected(canonical_bytes(stranger.sign(payload))).code == "bad_signature"
    assert rejected(canonical_bytes(Signer("west", Ed25519PrivateKey.generate()).sign(payload))).code == "unknown_signer"


def test_a_row_level_field_is_rejected_by_the_schema_even_when_signed(payload):
    leaky = copy.deepcopy(payload)
    leaky["comparisons"]["tacrolimus_vs_CTX"]["weights"] = [1.2, 3.4]
    err = rejected(signed_bytes(leaky))
    assert err.code == "schema" and "weights" in err.reason


def _set(path: str, value):
    """An edit of the payload at a dotted path (the last part may be a new key)."""
    def edit(p: dict) -> None:
        *parents, last = path.split("/")
        node = p
        for k in parents:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(last) if isinstance(node, list) else last] = value
    return edit


def _all_but_two_died(p: dict) -> None:
    """The first arm with a published size of at least threshold + 2: its death count set to that size minus 2."""
    for c in p["comparisons"].values():
        n = c["n_control"]
        if n is not None and n >= p["suppression"]["threshold"] + 2:
            c["outcomes"]["death"]["events_control"] = n - 2
            return
    raise AssertionError("no arm large enough in the fixture package")


CTX = "comparisons/tacrolimus_vs_CTX"
SIGNED_EDITS = {  # what a site's signed package must not say, the rejection code and a word of its reason
    "a count under the threshold": (_set("cohort/groups/tacrolimus", 3), "small_cell", "cohort.groups.tacrolimus"),
    "an attrition count under the threshold": (_set("attrition/retrospective/excluded/age_under_18", 1), "small_cell", "age_under_18"),
    "an event count under the threshold": (_set(f"{CTX}/outcomes/death/events_control", 4), "small_cell", "events_control"),
    "a threshold under the consortium's": (_set("suppression/threshold", 2), "small_cell", "threshold"),
    "all but two of an arm with the event": (_all_but_two_died, "small_cell", "without the event"),
    "an id in created_at": (_set("created_at", "pt-000123 2016-03-04"), "schema", "created_at"),
    "an id and a date in git_commit": (_set("software/git_commit", "pt-000123 born 1961-02-03"), "schema", "git_commit"),
    "an id in package_version": (_set("software/package_version", "pt-000123"), "schema", "package_version"),
    "a pseudonym as a withheld key": (_set("suppression/withheld/0", "3f9a1c0e7b2d pt-000123"), "schema", "withheld"),
    "free text in a note": (_set(f"{CTX}/outcomes/death/note", "died 2016-03-04 (pt-000123)"), "schema", "note"),
    "free text in a comparison note": (_set(f"{CTX}/note", "pt-000123"), "schema", "note"),
    "an id as an attrition reason": (_set("attrition/retrospective/excluded/pt-000123", 0), "schema", "pt-000123"),
    "an unknown attrition cohort": (_set("attrition/pt-000123", {"screened": 9, "included": 9, "excluded": {}}), "schema", "pt-000123"),
    "an unknown comparison": (_set("comparisons/pt-000123", None), "schema", "pt-000123"),
    "an id as a covariate": (_set(f"{CTX}/balance/0/covariate", "pt000123"), "schema", "covariate"),
    "a row value as an SMD": (_set(f"{CTX}/balance/0/smd_weighted", 61.0), "schema", "smd_weighted"),
    "an ESS above the arm size": (_set(f"{CTX}/ess_treated", 1e9), "inconsistent", "ess_treated"),
    "a negative ESS": (_set(f"{CTX}/ess_control", -1.0), "schema", "ess_control"),
}


@pytest.mark.parametrize("edit", SIGNED_EDITS)
def test_a_signed_package_that_says_too_much_is_rejected_with_its_reason(payload, edit):
    """The coordinator re-checks what a package says (issue 18, D2): a site's signature vouches for who sent it,
    not that its software withheld what it should."""
    change, code, word = SIGNED_EDITS[edit]
    forged = copy.deepcopy(payload)
    change(forged)
    err = rejected(signed_bytes(forged))
    assert err.code == code and word in err.reason, (edit, err)


def test_a_site_learns_before_publishing_that_its_package_would_be_rejected():
    tables = site_tables("central")
    upper = package_of("central", tables, software={"package_version": "0.1.0", "git_commit": "ABCDEF1234567"})
    assert upper["software"]["git_commit"] == "abcdef1234567"
    with pytest.raises(ValueError, match="would be rejected.*git_commit"):
        package_of("central", tables, software={"package_version": "0.1.0", "git_commit": "v1.2-dirty"})


def test_data_cutoff_must_be_the_consortiums(payload):
    assert verify_document(signed_bytes(payload), "site_aggregates", TRUSTED, expected_digest=DIGEST, expected_data_cutoff=CUTOFF)
    moved = {**payload, "contract": {**payload["contract"], "data_cutoff": "2016-03-04"}}  # a patient's death date, say
    err = rejected(signed_bytes(moved), expected_data_cutoff=CUTOFF)
    assert err.code == "data_cutoff" and "2016-03-04" in err.reason and "2026-01-01" in err.reason


def test_malformed_json_is_rejected(payload):
    assert rejected(b"{not json").code == "malformed"
    text = signed_bytes(payload).decode()
    assert rejected(text.replace('"kind":"site_aggregates"', '"kind":"site_aggregates","kind":"x"').encode()).code == "malformed"
    assert rejected(b'{"a": NaN}').code == "malformed"


def test_package_counts_agree_with_study_results_on_a_fixture_site():
    tables = site_tables("south")
    p = package_of("south", tables)
    effects = study_results(tables.cohort).effect_estimates
    row = effects[(effects["analysis"] == "primary") & (effects["comparison"] == "tacrolimus_vs_CTX")
                  & (effects["outcome"] == "relapse")].iloc[0]
    c = p["comparisons"]["tacrolimus_vs_CTX"]
    assert (c["n_treated"], c["n_control"], c["outcomes"]["relapse"]["events_treated"]) == (
        row["n_treated"], row["n_control"], row["events_treated"])
    assert p["attrition"]["retrospective"]["included"] == p["cohort"]["n"] == len(tables.cohort)


def test_a_site_signs_only_its_own_package(payload):
    assert verify_document(canonical_bytes(sign_package(payload, SIGNERS["central"])), "site_aggregates", TRUSTED)
    with pytest.raises(ValueError, match="cannot sign the package of site 'central'"):
        sign_package(payload, SIGNERS["north"])


def test_all_but_a_few_with_the_event_is_a_small_cell_and_the_estimate_follows():
    """"All but 2 died" identifies the 2 survivors as surely as "2 died" identifies the dead: the arm's event count
    is withheld (and, through the sums, the same arm's count in every comparison), and so is the estimate."""
    tables = site_tables("north")
    cohort = tables.cohort.copy()
    treated = cohort.index[cohort["group"].eq("tacrolimus")]
    cohort.loc[treated, "death_event"] = 1
    cohort.loc[treated[:2], "death_event"] = 0      # 2 of the 51 tacrolimus patients survive
    changed = SiteTables(cohort, tables.cohort_attrition, tables.iptw_weights, tables.covariate_balance)
    package = package_of("north", changed)
    for name, comparison in package["comparisons"].items():
        death = comparison["outcomes"]["death"]
        assert death["events_treated"] is None and death["estimate"] is None, name
        assert f"comparisons.{name}.outcomes.death.events_treated" in package["suppression"]["withheld"]
    main = package["comparisons"]["tacrolimus_vs_conventional"]
    assert main["n_treated"] == 51 and main["outcomes"]["death"]["note"] == NOTES["events_withheld"]
    assert withheld_estimates(changed)[("tacrolimus_vs_conventional", "death")] == "events_withheld"   # the site's rule
    assert ("tacrolimus_vs_conventional", "death") not in withheld_estimates(tables)                   # not before
    assert package_of("north", tables)["comparisons"]["tacrolimus_vs_conventional"]["outcomes"]["death"]["estimate"]


def _with_cohort(site: str, edit) -> SiteTables:
    tables = site_tables(site)
    cohort = tables.cohort.copy()
    edit(cohort)
    return SiteTables(cohort, tables.cohort_attrition, tables.iptw_weights, tables.covariate_balance)


def _smd_of(package: dict, comparison: str, covariate: str) -> float | None:
    return next(b["smd_unweighted"] for b in package["comparisons"][comparison]["balance"] if b["covariate"] == covariate)


def test_an_indicator_cell_of_zero_withholds_its_smd():
    """No one in the tacrolimus arm had plasma exchange: with the arm's size that says it of every one of them."""
    def edit(cohort):
        cohort.loc[cohort["group"].eq("tacrolimus"), "plasma_exchange"] = 0
    before, after = package_of("south", site_tables("south")), package_of("south", _with_cohort("south", edit))
    assert _smd_of(before, "tacrolimus_vs_conventional", "plasma_exchange") is not None
    for name in after["comparisons"]:   # the tacrolimus arm is the same in every comparison
        assert _smd_of(after, name, "plasma_exchange") is None, name


def test_an_indicator_cell_is_protected_across_comparisons():
    """With IVIG among the conventional arm: CTX 10, MTX 3, AZA 6, MMF and CsA 12 (31 in all). MTX's 3 is small; the
    conventional arm's 31 minus CTX, AZA and the others would give it back, so AZA's 6 (the smallest cell at least
    the threshold) is withheld too: AZA's IVIG balance goes although its own cells are large."""
    def edit(cohort):
        cohort["ivig"] = 0
        wanted = {"CTX": 10, "MTX": 3, "AZA": 6, "MMF": 12}
        for agent, n in wanted.items():
            cohort.loc[cohort.index[cohort["conventional_agent"].eq(agent)][:n], "ivig"] = 1
        cohort.loc[cohort.index[cohort["group"].eq("tacrolimus")][:100], "ivig"] = 1
    package = package_of("south", _with_cohort("south", edit))
    assert {name: _smd_of(package, name, "ivig") is None for name in package["comparisons"]} == {
        "tacrolimus_vs_conventional": False, "tacrolimus_vs_CTX": False, "tacrolimus_vs_MTX": True,
        "tacrolimus_vs_AZA": True}


def test_a_small_remainder_of_mmf_and_csa_withholds_a_published_arm():
    """The conventional arm is CTX + MTX + AZA + the agents without a comparison (MMF, CsA): if those are 4
    patients, the published arms would give them back, so the smallest arm at least the threshold (AZA, 8) goes."""
    def edit(cohort):
        cohort.loc[cohort["conventional_agent"].eq("MMF"), "conventional_agent"] = "CTX"   # central: CsA 4 remain
    package = package_of("central", _with_cohort("central", edit))
    arms = {name: c["n_control"] for name, c in package["comparisons"].items()}
    assert arms == {"tacrolimus_vs_conventional": 70, "tacrolimus_vs_CTX": 36, "tacrolimus_vs_MTX": 22,
                    "tacrolimus_vs_AZA": None}
    assert "comparisons.tacrolimus_vs_AZA.n_control" in package["suppression"]["withheld"]
