// A real, certified OpenID Connect provider (panva/oidc-provider 8.x) for auditcast's
// demo (`auditcast up --demo`) and tests. Users and groups come from a JSON file; the
// login page is a plain HTML form that a browser or a test (over HTTP) can submit.
//
//   node server.js --issuer http://127.0.0.1:PORT --port PORT --users users.json --keys jwks.json
//
// users.json: {"alice": {"password": "...", "email": "...", "groups": ["admins"]}, ...}
// jwks.json:  {"keys": [JWK, ...]}: private signing keys, the first one signs (rotation:
//             put the new key first and keep the old one so its tokens still verify).
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    issuer: { type: 'string' },
    port: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    users: { type: 'string' },
    keys: { type: 'string' },
    'client-id': { type: 'string', default: 'auditcast' },
  },
});

const users = JSON.parse(readFileSync(args.users, 'utf8'));
const jwks = JSON.parse(readFileSync(args.keys, 'utf8'));

const html = (title, body) => `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title>
<style>body{font-family:sans-serif;max-width:24em;margin:4em auto}input{display:block;margin:.5em 0;width:100%}</style>
</head><body><h1>${title}</h1>${body}</body></html>`;
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);

const provider = new Provider(args.issuer, {
  clients: [{
    client_id: args['client-id'],
    application_type: 'native', // RFC 8252: loopback redirect URIs match on any port
    token_endpoint_auth_method: 'none',
    redirect_uris: ['http://127.0.0.1/callback'],
    grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
  }],
  jwks,
  cookies: { keys: ['auditcast-demo-idp-cookie-key'] },
  pkce: { required: () => true },
  conformIdTokenClaims: false, // put scope claims (email, groups) in the ID token
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
    groups: ['groups'],
  },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
  },
  ttl: { IdToken: 3600, AccessToken: 3600, AuthorizationCode: 120, DeviceCode: 600, Interaction: 600, Session: 3600, Grant: 3600 },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, id) => {
    const u = users[id];
    if (!u) return undefined;
    return {
      accountId: id,
      claims: async () => ({
        sub: id, preferred_username: id, name: u.name || id,
        email: u.email, email_verified: true, groups: u.groups || [],
      }),
    };
  },
});
provider.proxy = false;

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 16384) throw new Error('form too large');
  }
  return Object.fromEntries(new URLSearchParams(body));
}

provider.use(async (ctx, next) => {
  const m = ctx.path.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!m) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { uid, prompt, params, session } = details;
  if (prompt.name === 'consent') {
    // auditcast is a first-party client: grant what it asked for without a prompt.
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    const grantId = await grant.save();
    const to = await provider.interactionResult(ctx.req, ctx.res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    ctx.status = 303; ctx.set('Location', to); return;
  }
  if (ctx.method === 'POST' && m[2]) {
    const form = await readForm(ctx.req);
    const u = users[form.username];
    if (!u || u.password !== form.password) {
      ctx.status = 401; ctx.type = 'html';
      ctx.body = html('Sign in to auditcast', `<p role="alert">wrong user name or password</p>${loginForm(uid)}`);
      return;
    }
    const to = await provider.interactionResult(ctx.req, ctx.res, { login: { accountId: form.username } }, { mergeWithLastSubmission: false });
    ctx.status = 303; ctx.set('Location', to); return;
  }
  ctx.type = 'html';
  ctx.body = html('Sign in to auditcast', loginForm(uid));
});

function loginForm(uid) {
  return `<form method="post" action="/interaction/${esc(uid)}/login">
<label>User name <input name="username" autofocus></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Sign in</button></form>`;
}

provider.listen(Number(args.port), args.host, () => {
  console.log(JSON.stringify({ msg: 'oidc provider ready', issuer: args.issuer }));
});
