"""What the report calls the warehouse's codes (the paper's words where it has them)."""
from __future__ import annotations

COMPARISONS = {
    "tacrolimus_vs_conventional": "Tacrolimus vs conventional",
    "tacrolimus_vs_CTX": "Tacrolimus vs CTX",
    "tacrolimus_vs_MTX": "Tacrolimus vs MTX",
    "tacrolimus_vs_AZA": "Tacrolimus vs AZA",
    "combination_vs_tacrolimus": "Combination vs tacrolimus",
}
OUTCOMES = {"death": "death", "relapse": "relapse", "resp_relapse": "respiratory relapse"}
KM_AXIS = {"death": "Survival", "relapse": "Relapse-free", "resp_relapse": "Free of respiratory relapse"}
ANALYSES = {"primary": "primary (ATE weights)", "stabilized": "stabilized weights",
            "truncated_1_99": "weights truncated at 1st/99th percentile", "bootstrap": "PS-refit bootstrap CI"}
GROUPS = {"tacrolimus": "Tacrolimus", "conventional": "Conventional", "combination": "Tacrolimus + pirfenidone",
          "CTX": "CTX", "MTX": "MTX", "AZA": "AZA", "all": "All"}

ATTRITION = {
    "all_patients": "All patients",
    "no_iim_condition": "No IIM diagnosis",
    "no_ild_condition": "No ILD diagnosis",
    "inclusion_body_myositis": "Inclusion body myositis",
    "overlap_myositis": "Overlap myositis",
    "juvenile_dm": "Juvenile dermatomyositis",
    "malignancy_within_3y": "Malignancy within 3 years of IIM diagnosis",
    "no_qualifying_immunosuppressant": "No immunosuppressant after ILD diagnosis",
    "no_glucocorticoid_at_index": "No glucocorticoid at index",
    "index_outside_window": "Index date outside the study window",
    "age_under_18": "Under 18 at index",
    "mixed_exposure": "Tacrolimus and another immunosuppressant",
    "death_date_unknown": "Death with unknown date",
    "enrolment_outside_window": "Enrolment outside the window",
    "no_tacrolimus": "No tacrolimus",
    "pirfenidone_other_dose": "Pirfenidone at another dose or started late",
    "withdrawn_before_12m": "Withdrawn before 12 months",
    "lost_to_follow_up_before_12m": "Lost to follow-up before 12 months",
}

VARIABLES = {
    "n": "Patients", "age": "Age (years)", "sex": "Sex", "diagnosis_subset": "Diagnosis",
    "initial_pred_mg_day": "Initial prednisolone-equivalent dose (mg/day)", "plasma_exchange": "Plasma exchange",
    "ivig": "IVIg", "anti_mda5": "Anti-MDA5 antibody positive", "ferritin": "Ferritin (ng/mL)", "esr": "ESR (mm/h)",
    "crp": "CRP (mg/L)", "creatine_kinase": "Creatine kinase (U/L)", "hrct_score": "HRCT total score",
}
LEVELS = {"0": "no", "1": "yes"}
TESTS = {"welch_t": "Welch t", "mann_whitney": "Mann-Whitney", "chi_square": "chi-square", "fisher": "Fisher", "none": ""}

SCALES = {
    "6mwt": "6MWT (m)", "mmrc": "mMRC", "patient_global_activity": "Patient Global Activity", "mmt8": "MMT-8",
    "myoact": "MYOACT", "mitax": "MITAX", "mdi": "MDI", "cat": "CAT", "hama": "HAMA", "hamd": "HAMD",
    "gc_pred_mg_day": "Prednisolone-equivalent dose (mg/day)",
}
FIGURE_2_SCALES = ("6mwt", "patient_global_activity", "mmt8", "myoact", "mitax", "mdi", "cat", "hama", "hamd")
FIGURE_3_SCALES = ("patient_global_activity", "mmt8", "myoact")
FIGURE_S4_SCALES = ("6mwt", "mitax", "mdi", "cat", "hama", "hamd")
HRCT = {"hrct_score": "Total HRCT score", "hrct_ground_glass": "Ground-glass attenuation",
        "hrct_consolidation": "Airspace consolidation", "hrct_reticular": "Reticular opacity",
        "hrct_traction_bronchiectasis": "Traction bronchiectasis"}
AE_CATEGORIES = {
    "any": "Any adverse event", "infection": "Infection", "opportunistic-infection": "Opportunistic infection",
    "glucose-metabolism": "Glucose metabolism", "electrolyte": "Electrolyte imbalance",
    "gastrointestinal": "Gastrointestinal", "hepatic": "Hepatic", "renal": "Renal", "hematologic": "Haematological",
    "other": "Other",
}


def label(mapping: dict[str, str], code: object) -> str:
    """The display name, or the code itself for one this module does not know (a hospital's own category)."""
    return mapping.get(str(code), str(code).replace("_", " "))
