-- Honeycell control plane, schema version 1.
-- Times are microseconds since the Unix epoch (bigint), as in the event store.

CREATE TABLE orgs (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    tier          text NOT NULL,
    created_at_us bigint NOT NULL
);

CREATE TABLE users (
    id            text PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    created_at_us bigint NOT NULL
);

-- Orgs exist implicitly (events may arrive before anyone registers the org),
-- so org ids are not foreign keys.
CREATE TABLE memberships (
    org_id  text NOT NULL,
    user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role    text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_by_user ON memberships (user_id, org_id);

CREATE TABLE identities (
    provider text NOT NULL,
    subject  text NOT NULL,
    user_id  text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (provider, subject)
);

CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    org_id        text NOT NULL,
    name          text NOT NULL,
    secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
    role          text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    scopes        text[] NOT NULL,
    created_by    text NOT NULL,
    created_at_us bigint NOT NULL,
    expires_at_us bigint NOT NULL,
    revoked_at_us bigint,
    last_used_us  bigint
);
CREATE INDEX api_keys_by_org ON api_keys (org_id, id);
CREATE INDEX api_keys_revoked ON api_keys (revoked_at_us) WHERE revoked_at_us IS NOT NULL;

CREATE TABLE refresh_tokens (
    id            text PRIMARY KEY,
    family        text NOT NULL,
    org_id        text NOT NULL,
    subject       text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    issued_at_us  bigint NOT NULL,
    expires_at_us bigint NOT NULL,
    state         text NOT NULL CHECK (state IN ('active', 'rotated', 'revoked'))
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);

CREATE TABLE signing_keys (
    kid           text PRIMARY KEY,
    alg           text NOT NULL,
    private_pem   text NOT NULL,
    public_pem    text NOT NULL,
    created_at_us bigint NOT NULL,
    retired_at_us bigint
);

-- The head of each org's audit hash chain, locked while appending.
CREATE TABLE audit_heads (
    org_id text PRIMARY KEY,
    seq    bigint NOT NULL,
    hash   bytea NOT NULL
);

CREATE TABLE audit_log (
    org_id    text NOT NULL,
    seq       bigint NOT NULL,
    at_us     bigint NOT NULL,
    actor     text NOT NULL,
    action    text NOT NULL,
    resource  text NOT NULL,
    result    text NOT NULL,
    trace_id  text,
    detail    text,
    prev_hash bytea NOT NULL,
    hash      bytea NOT NULL,
    PRIMARY KEY (org_id, seq)
);
