-- Claims source schema for PostgreSQL. Idempotent: safe to run again.
-- Sensitive columns are listed in schemas/claims_domain.yaml, the one place the topology
-- and the processors read them from.

CREATE TABLE IF NOT EXISTS public.members (
    member_id      bigint PRIMARY KEY,
    first_name     text        NOT NULL,
    last_name      text        NOT NULL,
    date_of_birth  date        NOT NULL,
    ssn            char(11)    NOT NULL,
    gender         char(1)     NOT NULL CHECK (gender IN ('F', 'M', 'X')),
    address_line   text        NOT NULL,
    city           text        NOT NULL,
    state          char(2)     NOT NULL,
    postal_code    varchar(10) NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS members_ssn_key ON public.members (ssn);
CREATE INDEX IF NOT EXISTS members_name_idx ON public.members (last_name, first_name);

CREATE TABLE IF NOT EXISTS public.providers (
    provider_id    bigint PRIMARY KEY,
    npi            char(10)    NOT NULL,
    name           text        NOT NULL,
    provider_type  text        NOT NULL CHECK (provider_type IN ('PHYSICIAN', 'FACILITY', 'PHARMACY', 'DENTIST', 'OPTOMETRIST')),
    specialty      text        NOT NULL,
    state          char(2)     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS providers_npi_key ON public.providers (npi);

CREATE TABLE IF NOT EXISTS public.policies (
    policy_id      bigint PRIMARY KEY,
    member_id      bigint      NOT NULL REFERENCES public.members (member_id),
    plan_code      text        NOT NULL,
    coverage_start date        NOT NULL,
    coverage_end   date,
    status         text        NOT NULL CHECK (status IN ('ACTIVE', 'TERMINATED')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (coverage_end IS NULL OR coverage_end >= coverage_start)
);
CREATE INDEX IF NOT EXISTS policies_member_idx ON public.policies (member_id, coverage_start);

CREATE TABLE IF NOT EXISTS public.claims (
    claim_id          bigint PRIMARY KEY,
    member_id         bigint        NOT NULL REFERENCES public.members (member_id),
    provider_id       bigint        NOT NULL REFERENCES public.providers (provider_id),
    policy_id         bigint        REFERENCES public.policies (policy_id),
    claim_type        text          NOT NULL CHECK (claim_type IN ('PROFESSIONAL', 'INSTITUTIONAL', 'PHARMACY', 'DENTAL', 'VISION')),
    form_type         text          NOT NULL CHECK (form_type IN ('CMS1500', 'UB04', 'NCPDP', 'ADA', 'VISION')),
    status            text          NOT NULL CHECK (status IN ('SUBMITTED', 'ADJUDICATED', 'PAID', 'DENIED', 'VOID')),
    service_date_from date          NOT NULL,
    service_date_to   date          NOT NULL,
    submitted_date    date          NOT NULL,
    billed_amount     numeric(12,2) NOT NULL,
    allowed_amount    numeric(12,2),
    paid_amount       numeric(12,2),
    diagnosis_codes   text[]        NOT NULL,
    place_of_service  char(2),
    frequency_code    smallint      NOT NULL DEFAULT 1,
    original_claim_id bigint,
    created_at        timestamptz   NOT NULL DEFAULT now(),
    updated_at        timestamptz   NOT NULL DEFAULT now(),
    CHECK (service_date_to >= service_date_from)
);
CREATE INDEX IF NOT EXISTS claims_member_idx ON public.claims (member_id, service_date_from);
CREATE INDEX IF NOT EXISTS claims_provider_idx ON public.claims (provider_id, service_date_from);
CREATE INDEX IF NOT EXISTS claims_status_idx ON public.claims (status) WHERE status IN ('SUBMITTED', 'ADJUDICATED');
CREATE INDEX IF NOT EXISTS claims_submitted_idx ON public.claims (submitted_date);

CREATE TABLE IF NOT EXISTS public.claim_lines (
    claim_id        bigint        NOT NULL REFERENCES public.claims (claim_id) ON DELETE CASCADE,
    line_number     smallint      NOT NULL,
    procedure_code  varchar(7)    NOT NULL,
    modifiers       text[]        NOT NULL DEFAULT '{}',
    units           integer       NOT NULL CHECK (units > 0),
    charge_amount   numeric(12,2) NOT NULL,
    service_date    date          NOT NULL,
    PRIMARY KEY (claim_id, line_number)
);
CREATE INDEX IF NOT EXISTS claim_lines_procedure_idx ON public.claim_lines (procedure_code);

-- What the workload generator planted, for measuring the analysis; not captured.
CREATE SCHEMA IF NOT EXISTS generator;
CREATE TABLE IF NOT EXISTS generator.anomaly_labels (
    claim_id         bigint PRIMARY KEY,
    anomaly          text   NOT NULL,
    related_claim_id bigint,
    detail           text   NOT NULL
);
