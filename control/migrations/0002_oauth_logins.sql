-- Honeycell control plane, schema version 2: logins in progress through an
-- OAuth2/OIDC provider, made at /auth/oauth/{provider}/start and taken once
-- at its callback. Only the SHA-256 of the `state` parameter is kept.

CREATE TABLE oauth_logins (
    state_sha256  text PRIMARY KEY,
    provider      text NOT NULL,
    pkce_verifier text NOT NULL,
    nonce         text NOT NULL,
    org_id        text,
    expires_at_us bigint NOT NULL
);
CREATE INDEX oauth_logins_by_expiry ON oauth_logins (expires_at_us);
