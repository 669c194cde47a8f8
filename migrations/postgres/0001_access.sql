-- llmux access store, PostgreSQL. Keys are stored as SHA-256 digests, never as keys.
CREATE TABLE store_revision (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO store_revision (id, revision) VALUES (1, 1);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner_id TEXT,
    key_sha256 TEXT NOT NULL UNIQUE,
    key_hint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    expires_at BIGINT,
    disabled BIGINT NOT NULL DEFAULT 0,
    allowed_models TEXT,
    allowed_operations TEXT,
    requests_per_minute BIGINT,
    requests_per_hour BIGINT,
    requests_per_day BIGINT,
    tokens_per_minute BIGINT,
    tokens_per_day BIGINT,
    max_concurrent_requests BIGINT,
    monthly_token_budget BIGINT
);
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
CREATE INDEX api_keys_owner ON api_keys (owner_id);

CREATE TABLE protected_endpoints (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    method TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (path, method)
);

CREATE TABLE quota_policies (
    id TEXT PRIMARY KEY,
    api_path TEXT NOT NULL,
    model TEXT NOT NULL,
    window_type TEXT NOT NULL,
    request_limit BIGINT NOT NULL,
    enforce_per_user BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (api_path, model)
);

CREATE TABLE quota_overrides (
    id TEXT PRIMARY KEY,
    api_path TEXT NOT NULL,
    model TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    window_type TEXT NOT NULL,
    request_limit BIGINT NOT NULL,
    exempt BIGINT NOT NULL,
    starts_at BIGINT,
    ends_at BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (api_path, model, owner_id)
);

-- Counters per bucket (`key:<id>`, `owner:<owner>`, ...) and fixed window, written in batches.
CREATE TABLE usage_counters (
    bucket TEXT NOT NULL,
    window_type TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (bucket, window_type, window_start)
);

-- Who changed what, when. Never a key.
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
