// Shared test identities and client metadata for the integration tests.

/** Users for tests/peers/oidc-op.mjs (--users). */
export const USERS = {
  alice: {
    password: 'alice-pw',
    claims: {
      sub: 'sub-alice-0001',
      email: 'alice@example.com',
      email_verified: true,
      preferred_username: 'alice',
      name: 'Alice Anders',
      given_name: 'Alice',
      family_name: 'Anders',
      groups: ['staff', 'engineering'],
      employee_type: 'employee',
      department: 'eng',
      employee_number: '1001',
    },
  },
  bob: {
    password: 'bob-pw',
    claims: {
      sub: 'sub-bob-0002',
      email: 'bob@example.com',
      email_verified: true,
      preferred_username: 'bob',
      name: 'Bob Brown',
      given_name: 'Bob',
      family_name: 'Brown',
      groups: ['staff'],
      employee_type: 'contractor',
      department: 'sales',
      employee_number: '2002',
    },
  },
  carol: {
    password: 'carol-pw',
    claims: {
      sub: 'sub-carol-0003',
      email: 'carol@example.com',
      email_verified: false,
      preferred_username: 'carol',
      name: 'Carol Clark',
      given_name: 'Carol',
      family_name: 'Clark',
      groups: ['staff', 'admins'],
      employee_type: 'employee',
      department: 'ops',
      employee_number: '3003',
    },
  },
};

/** Scopes that put every fixture claim into the ID token. */
export const ALL_SCOPES = 'openid email profile groups employee';

/**
 * Client metadata for tests/peers/oidc-op.mjs (--clients).
 * redirectUris / postLogoutUris: arrays of absolute URLs.
 */
export function oidcClient({
  clientId = 'provgate-test',
  clientSecret = 'provgate-test-secret-0123456789abcdef',
  redirectUris,
  postLogoutUris = [],
  authMethod = 'client_secret_basic',
  idTokenAlg,
} = {}) {
  return {
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    post_logout_redirect_uris: postLogoutUris,
    token_endpoint_auth_method: authMethod,
    ...(idTokenAlg ? { id_token_signed_response_alg: idTokenAlg } : {}),
  };
}
