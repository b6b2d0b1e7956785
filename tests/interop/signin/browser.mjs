// The person at the browser, in plain HTTP: follows the authorization URL,
// fills the login form (its hidden fields, the CSRF token, the credentials),
// allows the consent page, and stops at the redirect to the client.

export class Browser {
  constructor() {
    this.cookies = new Map();
  }

  async fetch(url, init = {}) {
    const headers = new Headers(init.headers);
    if (this.cookies.size) {
      headers.set('cookie', [...this.cookies].map(([n, v]) => `${n}=${v}`).join('; '));
    }
    const response = await fetch(url, { ...init, headers, redirect: 'manual' });
    for (const set of response.headers.getSetCookie()) {
      const [pair] = set.split(';');
      const at = pair.indexOf('=');
      const [name, value] = [pair.slice(0, at), pair.slice(at + 1)];
      if (value) this.cookies.set(name, value);
      else this.cookies.delete(name);
    }
    return response;
  }

  /** The hidden inputs of the first form of `html`. */
  static hidden(html) {
    const form = html.slice(html.indexOf('<form'), html.indexOf('</form>'));
    const fields = new URLSearchParams();
    for (const [, name, value] of form.matchAll(/<input type="hidden" name="([^"]*)" value="([^"]*)">/g)) {
      fields.append(name, value.replaceAll('&quot;', '"').replaceAll('&#39;', "'")
        .replaceAll('&lt;', '<').replaceAll('&gt;', '>').replaceAll('&amp;', '&'));
    }
    return fields;
  }

  async submit(base, html, extra) {
    const fields = Browser.hidden(html);
    for (const [name, value] of Object.entries(extra)) fields.append(name, value);
    return this.fetch(new URL('/oauth2/authorize', base), {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: fields,
    });
  }

  /** Signs in (and consents when asked); the URL the server redirects to. */
  async signIn(authorizationUrl, username, password) {
    let response = await this.fetch(authorizationUrl);
    const pages = [];
    while (response.status === 200 || response.status === 401) {
      const html = await response.text();
      if (html.includes('name="password"')) {
        pages.push('login');
        if (pages.filter((p) => p === 'login').length > 1) throw new Error('login refused');
        response = await this.submit(authorizationUrl, html, { username, password });
      } else if (html.includes('name="decision"')) {
        pages.push('consent');
        response = await this.submit(authorizationUrl, html, { decision: 'allow' });
      } else {
        throw new Error(`unexpected page: ${html.slice(0, 300)}`);
      }
    }
    const location = response.headers.get('location');
    if (!location) throw new Error(`no redirect: ${response.status} ${await response.text()}`);
    return { location: new URL(location), pages };
  }
}

/** `endpoint` with the authorization request's `params` in its query. */
export function authorizationUrl(endpoint, params) {
  const url = new URL(endpoint);
  for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
  return url;
}
