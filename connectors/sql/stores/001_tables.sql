-- Tables of a PostgreSQL store (hot or warm tier), in schema {schema}. Idempotent.
-- Every non-key column is nullable: cloud tiers receive sensitive columns removed.
-- `_position` is the source position of the row's latest change; writes are guarded by it.
-- {claims_partition} / {lines_partition} are empty for the hot store and
-- `PARTITION BY RANGE (...)` for the warm store, whose keys then include the date.
CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.members (
    member_id bigint PRIMARY KEY,
    first_name text, last_name text, date_of_birth date, ssn text, gender char(1),
    address_line text, city text, state char(2), postal_code text,
    created_at timestamptz, updated_at timestamptz,
    _position text NOT NULL, _written_at timestamptz NOT NULL DEFAULT now()
);
-- Sensitive text columns hold tokens or ciphertext when tiering protects them (`tok:…`,
-- `enc:<key id>:…`), longer than the source's char(11) / varchar(10). Stores made before
-- this change are widened (once: the check keeps later starts from locking the table).
DO $$ BEGIN IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = '{schema}' AND table_name = 'members' AND column_name IN ('ssn', 'postal_code') AND data_type <> 'text') THEN ALTER TABLE {schema}.members ALTER COLUMN ssn TYPE text, ALTER COLUMN postal_code TYPE text; END IF; END $$;

CREATE TABLE IF NOT EXISTS {schema}.providers (
    provider_id bigint PRIMARY KEY,
    npi char(10), name text, provider_type text, specialty text, state char(2),
    created_at timestamptz, updated_at timestamptz,
    _position text NOT NULL, _written_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS {schema}.policies (
    policy_id bigint PRIMARY KEY,
    member_id bigint, plan_code text, coverage_start date, coverage_end date, status text,
    created_at timestamptz, updated_at timestamptz,
    _position text NOT NULL, _written_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS {schema}.claims (
    claim_id bigint NOT NULL,
    member_id bigint, provider_id bigint, policy_id bigint, claim_type text, form_type text,
    status text, service_date_from date NOT NULL, service_date_to date, submitted_date date,
    billed_amount numeric(12,2), allowed_amount numeric(12,2), paid_amount numeric(12,2),
    diagnosis_codes text[], place_of_service char(2), frequency_code smallint,
    original_claim_id bigint, created_at timestamptz, updated_at timestamptz,
    _position text NOT NULL, _written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({claims_key})
) {claims_partition};

CREATE TABLE IF NOT EXISTS {schema}.claim_lines (
    claim_id bigint NOT NULL, line_number smallint NOT NULL,
    procedure_code varchar(7), modifiers text[], units integer, charge_amount numeric(12,2),
    service_date date NOT NULL,
    _position text NOT NULL, _written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ({lines_key})
) {lines_partition};

CREATE TABLE IF NOT EXISTS {schema}.claim_analysis (
    claim_id bigint PRIMARY KEY,
    analysis_id text NOT NULL, position text NOT NULL, claim_class text, score double precision,
    routing text, reasons jsonb, event_time timestamptz,
    _position text NOT NULL, _written_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS claim_analysis_routing_idx ON {schema}.claim_analysis (routing);
