-- Claims source schema for SQL Server, with CDC enabled on the captured tables.
-- Idempotent: safe to run again. Run in the claims database by a sysadmin (CDC needs it).
-- SQL Server has no arrays: diagnosis_codes and modifiers hold codes separated by ','.

IF OBJECT_ID(N'dbo.members', N'U') IS NULL
CREATE TABLE dbo.members (
    member_id      bigint         NOT NULL CONSTRAINT members_pkey PRIMARY KEY,
    first_name     nvarchar(100)  NOT NULL,
    last_name      nvarchar(100)  NOT NULL,
    date_of_birth  date           NOT NULL,
    ssn            char(11)       NOT NULL CONSTRAINT members_ssn_key UNIQUE,
    gender         char(1)        NOT NULL CONSTRAINT members_gender_check CHECK (gender IN ('F', 'M', 'X')),
    address_line   nvarchar(200)  NOT NULL,
    city           nvarchar(100)  NOT NULL,
    state          char(2)        NOT NULL,
    postal_code    varchar(10)    NOT NULL,
    created_at     datetimeoffset NOT NULL CONSTRAINT members_created_df DEFAULT SYSDATETIMEOFFSET(),
    updated_at     datetimeoffset NOT NULL CONSTRAINT members_updated_df DEFAULT SYSDATETIMEOFFSET()
);
GO

IF OBJECT_ID(N'dbo.providers', N'U') IS NULL
CREATE TABLE dbo.providers (
    provider_id    bigint         NOT NULL CONSTRAINT providers_pkey PRIMARY KEY,
    npi            char(10)       NOT NULL CONSTRAINT providers_npi_key UNIQUE,
    name           nvarchar(200)  NOT NULL,
    provider_type  varchar(12)    NOT NULL CONSTRAINT providers_type_check CHECK (provider_type IN ('PHYSICIAN', 'FACILITY', 'PHARMACY', 'DENTIST', 'OPTOMETRIST')),
    specialty      nvarchar(100)  NOT NULL,
    state          char(2)        NOT NULL,
    created_at     datetimeoffset NOT NULL CONSTRAINT providers_created_df DEFAULT SYSDATETIMEOFFSET(),
    updated_at     datetimeoffset NOT NULL CONSTRAINT providers_updated_df DEFAULT SYSDATETIMEOFFSET()
);
GO

IF OBJECT_ID(N'dbo.policies', N'U') IS NULL
CREATE TABLE dbo.policies (
    policy_id      bigint         NOT NULL CONSTRAINT policies_pkey PRIMARY KEY,
    member_id      bigint         NOT NULL CONSTRAINT policies_member_fkey REFERENCES dbo.members (member_id),
    plan_code      varchar(20)    NOT NULL,
    coverage_start date           NOT NULL,
    coverage_end   date           NULL,
    status         varchar(10)    NOT NULL CONSTRAINT policies_status_check CHECK (status IN ('ACTIVE', 'TERMINATED')),
    created_at     datetimeoffset NOT NULL CONSTRAINT policies_created_df DEFAULT SYSDATETIMEOFFSET(),
    updated_at     datetimeoffset NOT NULL CONSTRAINT policies_updated_df DEFAULT SYSDATETIMEOFFSET(),
    CONSTRAINT policies_coverage_check CHECK (coverage_end IS NULL OR coverage_end >= coverage_start)
);
GO
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'policies_member_idx')
CREATE INDEX policies_member_idx ON dbo.policies (member_id, coverage_start);
GO

IF OBJECT_ID(N'dbo.claims', N'U') IS NULL
CREATE TABLE dbo.claims (
    claim_id          bigint         NOT NULL CONSTRAINT claims_pkey PRIMARY KEY,
    member_id         bigint         NOT NULL CONSTRAINT claims_member_fkey REFERENCES dbo.members (member_id),
    provider_id       bigint         NOT NULL CONSTRAINT claims_provider_fkey REFERENCES dbo.providers (provider_id),
    policy_id         bigint         NULL CONSTRAINT claims_policy_fkey REFERENCES dbo.policies (policy_id),
    claim_type        varchar(13)    NOT NULL CONSTRAINT claims_type_check CHECK (claim_type IN ('PROFESSIONAL', 'INSTITUTIONAL', 'PHARMACY', 'DENTAL', 'VISION')),
    form_type         varchar(7)     NOT NULL CONSTRAINT claims_form_check CHECK (form_type IN ('CMS1500', 'UB04', 'NCPDP', 'ADA', 'VISION')),
    status            varchar(11)    NOT NULL CONSTRAINT claims_status_check CHECK (status IN ('SUBMITTED', 'ADJUDICATED', 'PAID', 'DENIED', 'VOID')),
    service_date_from date           NOT NULL,
    service_date_to   date           NOT NULL,
    submitted_date    date           NOT NULL,
    billed_amount     decimal(12,2)  NOT NULL,
    allowed_amount    decimal(12,2)  NULL,
    paid_amount       decimal(12,2)  NULL,
    diagnosis_codes   varchar(400)   NOT NULL,
    place_of_service  char(2)        NULL,
    frequency_code    smallint       NOT NULL CONSTRAINT claims_frequency_df DEFAULT 1,
    original_claim_id bigint         NULL,
    created_at        datetimeoffset NOT NULL CONSTRAINT claims_created_df DEFAULT SYSDATETIMEOFFSET(),
    updated_at        datetimeoffset NOT NULL CONSTRAINT claims_updated_df DEFAULT SYSDATETIMEOFFSET(),
    CONSTRAINT claims_dates_check CHECK (service_date_to >= service_date_from)
);
GO
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'claims_member_idx')
CREATE INDEX claims_member_idx ON dbo.claims (member_id, service_date_from);
GO
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'claims_provider_idx')
CREATE INDEX claims_provider_idx ON dbo.claims (provider_id, service_date_from);
GO
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'claims_submitted_idx')
CREATE INDEX claims_submitted_idx ON dbo.claims (submitted_date);
GO

IF OBJECT_ID(N'dbo.claim_lines', N'U') IS NULL
CREATE TABLE dbo.claim_lines (
    claim_id        bigint        NOT NULL CONSTRAINT claim_lines_claim_fkey REFERENCES dbo.claims (claim_id) ON DELETE CASCADE,
    line_number     smallint      NOT NULL,
    procedure_code  varchar(7)    NOT NULL,
    modifiers       varchar(40)   NOT NULL CONSTRAINT claim_lines_modifiers_df DEFAULT '',
    units           int           NOT NULL CONSTRAINT claim_lines_units_check CHECK (units > 0),
    charge_amount   decimal(12,2) NOT NULL,
    service_date    date          NOT NULL,
    CONSTRAINT claim_lines_pkey PRIMARY KEY (claim_id, line_number)
);
GO
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'claim_lines_procedure_idx')
CREATE INDEX claim_lines_procedure_idx ON dbo.claim_lines (procedure_code);
GO

IF SCHEMA_ID(N'generator') IS NULL EXEC sys.sp_executesql N'CREATE SCHEMA generator';
GO
IF OBJECT_ID(N'generator.anomaly_labels', N'U') IS NULL
CREATE TABLE generator.anomaly_labels (
    claim_id         bigint        NOT NULL CONSTRAINT anomaly_labels_pkey PRIMARY KEY,
    anomaly          varchar(40)   NOT NULL,
    related_claim_id bigint        NULL,
    detail           nvarchar(400) NOT NULL
);
GO

-- The CDC source reads its initial snapshot under SNAPSHOT isolation (a consistent view
-- that takes no shared locks on the legacy tables).
IF (SELECT snapshot_isolation_state FROM sys.databases WHERE name = DB_NAME()) = 0
EXEC sys.sp_executesql N'ALTER DATABASE CURRENT SET ALLOW_SNAPSHOT_ISOLATION ON';
GO

-- Change data capture: the database, then each captured table (all update images).
IF (SELECT is_cdc_enabled FROM sys.databases WHERE name = DB_NAME()) = 0
EXEC sys.sp_cdc_enable_db;
GO
IF NOT EXISTS (SELECT 1 FROM sys.tables WHERE object_id = OBJECT_ID(N'dbo.members') AND is_tracked_by_cdc = 1)
EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'members', @role_name = NULL, @supports_net_changes = 0;
GO
IF NOT EXISTS (SELECT 1 FROM sys.tables WHERE object_id = OBJECT_ID(N'dbo.providers') AND is_tracked_by_cdc = 1)
EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'providers', @role_name = NULL, @supports_net_changes = 0;
GO
IF NOT EXISTS (SELECT 1 FROM sys.tables WHERE object_id = OBJECT_ID(N'dbo.policies') AND is_tracked_by_cdc = 1)
EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'policies', @role_name = NULL, @supports_net_changes = 0;
GO
IF NOT EXISTS (SELECT 1 FROM sys.tables WHERE object_id = OBJECT_ID(N'dbo.claims') AND is_tracked_by_cdc = 1)
EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'claims', @role_name = NULL, @supports_net_changes = 0;
GO
IF NOT EXISTS (SELECT 1 FROM sys.tables WHERE object_id = OBJECT_ID(N'dbo.claim_lines') AND is_tracked_by_cdc = 1)
EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'claim_lines', @role_name = NULL, @supports_net_changes = 0;
GO
