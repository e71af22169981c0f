-- Run once per warehouse by its owner (PostgreSQL). Analysts read the study tables, the views and
-- the provenance in schema public; they get nothing in `fhir` (raw FHIR data with real ids) or
-- `restricted` (patient_xref: pseudonym -> FHIR id, and quarantine: raw resources).
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iimild_analyst') THEN
    CREATE ROLE iimild_analyst NOLOGIN;
  END IF;
END $$;
CREATE SCHEMA IF NOT EXISTS fhir;
CREATE SCHEMA IF NOT EXISTS restricted;
REVOKE ALL ON SCHEMA fhir, restricted FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO iimild_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO iimild_analyst;
-- Tables and views the pipeline creates later are granted too (the pipeline's role owns them).
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO iimild_analyst;
