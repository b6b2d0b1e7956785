package main

// The sign-in load of bench/signin.sh (issue #17), against any OpenID
// Provider with a login form (the token server's pages, oidc-provider's
// interaction in bench/peer/signin.mjs):
//
//	benchapp login -issuer URL -client ID -redirect URI -scope S [-param k=v]... -user U -password P -out FILE
//	    Signs in once as a browser does: the authorization request, then
//	    every form on the way with its hidden fields (the CSRF token, the
//	    request) and the username and password, until the redirect with the
//	    code; redeems the code and checks the tokens (ES256 signatures
//	    against the JWKS of the discovery document, iss, aud, nonce, sub).
//	    Writes the session's cookies as one Cookie header line to FILE.
//	benchapp flows -issuer URL -client ID -redirect URI -scope S [-param k=v]... -cookies FILE -c N -d DUR
//	    The load: each worker runs whole code flows, back to back: GET the
//	    authorization endpoint with the session cookie and a new PKCE pair
//	    (S256) and state, read the code from the redirect, POST it with the
//	    verifier to the token endpoint. A flow counts when the redirect had
//	    the code and the state, and the token response was 200 with an
//	    access_token and an id_token. One BENCH_RESULT line on stdout.
//	benchapp flows ... -mint N -out FILE
//	    N flows (scope with offline_access) and their refresh tokens, one a line.
//	benchapp refresh -issuer URL -client ID -pool FILE -c N -d DUR
//	    refresh_token grants, each of a pool token used once (rotation makes
//	    them single-use); stops early when the pool runs out (exhausted=1).
//
// Runs with GOMAXPROCS=1 on the load generator's core; its CPU is reported.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"math/big"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The most of a response body read.
const maxBody = 1 << 20

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// provider: the endpoints and the client's authorization request.
type provider struct {
	issuer, authorize, token, client, redirect string
	base                                       string // the fixed part of the authorization query
	conns                                      int
	hc                                         *http.Client
}

func providerFlags(fs *flag.FlagSet) func() *provider {
	issuer := fs.String("issuer", "", "issuer URL (endpoints from its discovery document)")
	client := fs.String("client", "", "client id (a public client)")
	redirect := fs.String("redirect", "", "redirect URI")
	scope := fs.String("scope", "openid", "scope")
	c := fs.Int("c", 32, "concurrent connections (one worker each)")
	var params multiFlag
	fs.Var(&params, "param", "extra authorization request parameter k=v (repeatable)")
	return func() *provider {
		tr := &http.Transport{MaxIdleConnsPerHost: *c, MaxConnsPerHost: *c, DisableCompression: true}
		p := &provider{issuer: strings.TrimSuffix(*issuer, "/"), client: *client, redirect: *redirect, conns: *c,
			hc: &http.Client{Transport: tr, Timeout: 10 * time.Second,
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
		var meta struct {
			Authorize string `json:"authorization_endpoint"`
			Token     string `json:"token_endpoint"`
		}
		fail(p.getJSON(p.issuer+"/.well-known/openid-configuration", &meta))
		if meta.Authorize == "" || meta.Token == "" {
			fail(errors.New("discovery document without authorization_endpoint or token_endpoint"))
		}
		p.authorize, p.token = meta.Authorize, meta.Token
		q := url.Values{"response_type": {"code"}, "client_id": {*client}, "redirect_uri": {*redirect},
			"scope": {*scope}, "code_challenge_method": {"S256"}}
		for _, kv := range params {
			k, v, _ := strings.Cut(kv, "=")
			q.Add(k, v)
		}
		p.base = q.Encode()
		return p
	}
}

func (p *provider) getJSON(u string, v any) error {
	resp, err := p.hc.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: HTTP %d: %.200s", u, resp.StatusCode, body)
	}
	return json.Unmarshal(body, v)
}

func random(n int) string {
	b := make([]byte, n)
	_, err := rand.Read(b)
	fail(err)
	return b64.EncodeToString(b)
}

// pkce: a new verifier (256 bits) and its S256 challenge.
func pkce() (verifier, challenge string) {
	verifier = random(32)
	sum := sha256.Sum256([]byte(verifier))
	return verifier, b64.EncodeToString(sum[:])
}

// request: a new authorization request URL, its verifier, state and nonce.
func (p *provider) request() (u, verifier, state, nonce string) {
	verifier, challenge := pkce()
	state, nonce = random(12), random(12)
	return p.authorize + "?" + p.base + "&code_challenge=" + challenge + "&state=" + state + "&nonce=" + nonce,
		verifier, state, nonce
}

// codeFrom: the code of a redirect to the client, after checking its state.
func (p *provider) codeFrom(resp *http.Response, state string) (string, error) {
	if resp.StatusCode != http.StatusFound && resp.StatusCode != http.StatusSeeOther {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return "", fmt.Errorf("authorize: HTTP %d: %s", resp.StatusCode, strings.Join(strings.Fields(string(b)), " "))
	}
	loc := resp.Header.Get("Location")
	rest, ok := strings.CutPrefix(loc, p.redirect+"?")
	if !ok {
		return "", fmt.Errorf("authorize: redirect to %.200s, not to the client", loc)
	}
	q, err := url.ParseQuery(rest)
	if err != nil {
		return "", fmt.Errorf("authorize: redirect query: %v", err)
	}
	if e := q.Get("error"); e != "" {
		return "", fmt.Errorf("authorize: %s: %s", e, q.Get("error_description"))
	}
	if q.Get("state") != state || q.Get("code") == "" {
		return "", fmt.Errorf("authorize: redirect without the code or the state: %.200s", loc)
	}
	return q.Get("code"), nil
}

// redeem: POST the token endpoint with a form; the body of a 200 that
// holds every one of want.
func (p *provider) post(form string, want ...string) ([]byte, error) {
	req, err := http.NewRequest("POST", p.token, strings.NewReader(form))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := p.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("token: HTTP %d: %.200s", resp.StatusCode, body)
	}
	for _, w := range want {
		if !bytes.Contains(body, []byte(`"`+w+`"`)) {
			return nil, fmt.Errorf("token: no %s in %.200s", w, body)
		}
	}
	return body, nil
}

func (p *provider) codeForm(code, verifier string) string {
	return "grant_type=authorization_code&code=" + url.QueryEscape(code) + "&redirect_uri=" +
		url.QueryEscape(p.redirect) + "&client_id=" + url.QueryEscape(p.client) + "&code_verifier=" + verifier
}

// --- login ------------------------------------------------------------------

var (
	formRe   = regexp.MustCompile(`(?is)<form\b[^>]*>.*?</form>`)
	actionRe = regexp.MustCompile(`(?i)\baction="([^"]*)"`)
	inputRe  = regexp.MustCompile(`(?i)<input\b[^>]*>`)
	nameRe   = regexp.MustCompile(`(?i)\bname="([^"]*)"`)
	valueRe  = regexp.MustCompile(`(?i)\bvalue="([^"]*)"`)
)

// fillLogin: the first form with a password field, filled as a person
// would (hidden fields as they are), and where it posts to.
func fillLogin(page, base, user, password string) (string, url.Values, error) {
	for _, f := range formRe.FindAllString(page, -1) {
		if !strings.Contains(strings.ToLower(f), `type="password"`) {
			continue
		}
		values := url.Values{}
		for _, in := range inputRe.FindAllString(f, -1) {
			name := nameRe.FindStringSubmatch(in)
			if name == nil {
				continue
			}
			n := html.UnescapeString(name[1])
			switch {
			case strings.Contains(strings.ToLower(in), `type="password"`):
				values.Set(n, password)
			case n == "username":
				values.Set(n, user)
			default:
				if v := valueRe.FindStringSubmatch(in); v != nil {
					values.Add(n, html.UnescapeString(v[1]))
				}
			}
		}
		action := base
		if a := actionRe.FindStringSubmatch(f); a != nil {
			ref, err := url.Parse(html.UnescapeString(a[1]))
			if err != nil {
				return "", nil, err
			}
			b, _ := url.Parse(base)
			action = b.ResolveReference(ref).String()
		}
		return action, values, nil
	}
	return "", nil, fmt.Errorf("no login form in the page: %.300s", page)
}

func login(args []string) {
	fs := flag.NewFlagSet("login", flag.ExitOnError)
	newProvider := providerFlags(fs)
	user := fs.String("user", "", "username")
	password := fs.String("password", "", "password")
	out := fs.String("out", "-", "file for the Cookie header line")
	fs.Parse(args)
	p := newProvider()
	jar, err := cookiejar.New(nil)
	fail(err)
	p.hc.Jar = jar
	u, verifier, state, nonce := p.request()
	resp, err := p.hc.Get(u)
	fail(err)
	forms := 0
	// Follow the provider's own redirects and fill its login form, until it
	// redirects to the client.
	for hops := 0; ; hops++ {
		if hops > 10 {
			fail(errors.New("login: more than 10 steps"))
		}
		loc := resp.Header.Get("Location")
		redirected := resp.StatusCode >= 300 && resp.StatusCode < 400
		if redirected && strings.HasPrefix(loc, p.redirect) {
			break
		}
		page, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		resp.Body.Close()
		base := resp.Request.URL
		switch {
		case redirected:
			next, err := base.Parse(loc)
			fail(err)
			resp, err = p.hc.Get(next.String())
			fail(err)
		case resp.StatusCode == 200 && forms < 2:
			action, values, err := fillLogin(string(page), base.String(), *user, *password)
			fail(err)
			forms++
			resp, err = p.hc.PostForm(action, values)
			fail(err)
		default:
			fail(fmt.Errorf("login: HTTP %d at %s: %.300s", resp.StatusCode, base, page))
		}
	}
	code, err := p.codeFrom(resp, state)
	fail(err)
	resp.Body.Close()
	body, err := p.post(p.codeForm(code, verifier), "access_token", "id_token")
	fail(err)
	fail(p.checkTokens(body, nonce))
	authURL, err := url.Parse(p.authorize)
	fail(err)
	var cookies []string
	for _, c := range jar.Cookies(authURL) {
		cookies = append(cookies, c.Name+"="+c.Value)
	}
	if len(cookies) == 0 {
		fail(errors.New("login: no cookie for the authorization endpoint"))
	}
	writeLines(*out, []string{strings.Join(cookies, "; ")})
}

// checkTokens: both tokens of a code redemption are ES256 JWTs signed by a
// key of the provider's JWKS; the ID token is for this client with this
// nonce, the access token is an RFC 9068 one (typ at+jwt).
func (p *provider) checkTokens(body []byte, nonce string) error {
	var tr struct {
		AccessToken string `json:"access_token"`
		IDToken     string `json:"id_token"`
		TokenType   string `json:"token_type"`
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		return err
	}
	if !strings.EqualFold(tr.TokenType, "Bearer") {
		return fmt.Errorf("token_type %q", tr.TokenType)
	}
	var meta struct {
		JWKS string `json:"jwks_uri"`
	}
	if err := p.getJSON(p.issuer+"/.well-known/openid-configuration", &meta); err != nil {
		return err
	}
	var jwks struct {
		Keys []struct{ Kid, Kty, Crv, X, Y string } `json:"keys"`
	}
	if err := p.getJSON(meta.JWKS, &jwks); err != nil {
		return err
	}
	keys := map[string]*ecdsa.PublicKey{}
	for _, k := range jwks.Keys {
		x, errX := b64.DecodeString(k.X)
		y, errY := b64.DecodeString(k.Y)
		if k.Kty == "EC" && k.Crv == "P-256" && errX == nil && errY == nil {
			keys[k.Kid] = &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
		}
	}
	id, err := verifyES256(tr.IDToken, keys)
	if err != nil {
		return fmt.Errorf("id_token: %v", err)
	}
	at, err := verifyES256(tr.AccessToken, keys)
	if err != nil {
		return fmt.Errorf("access_token: %v", err)
	}
	if id["iss"] != p.issuer || !audHas(id["aud"], p.client) || id["nonce"] != nonce || id["sub"] == "" {
		return fmt.Errorf("id_token claims: %v", id)
	}
	scope, _ := at["scope"].(string)
	if at["typ_header"] != "at+jwt" || at["iss"] != p.issuer || at["sub"] != id["sub"] || !audHas(at["aud"], "orders") ||
		!slices.Contains(strings.Fields(scope), "orders:read") {
		return fmt.Errorf("access_token claims: %v", at)
	}
	fmt.Fprintf(os.Stderr, "benchapp login: signed in as %v; ID token and access token (aud %v, scope %q) ES256, signatures good\n", id["sub"], at["aud"], scope)
	return nil
}

func audHas(aud any, want string) bool {
	switch a := aud.(type) {
	case string:
		return a == want
	case []any:
		return slices.Contains(a, any(want))
	}
	return false
}

// verifyES256: the claims of a JWT signed ES256 by one of keys, with the
// header's typ as "typ_header".
func verifyES256(jwt string, keys map[string]*ecdsa.PublicKey) (map[string]any, error) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return nil, errors.New("not a JWS")
	}
	var header struct{ Alg, Kid, Typ string }
	h, err := b64.DecodeString(parts[0])
	if err != nil || json.Unmarshal(h, &header) != nil || header.Alg != "ES256" {
		return nil, fmt.Errorf("header %s", h)
	}
	key := keys[header.Kid]
	sig, err := b64.DecodeString(parts[2])
	if key == nil || err != nil || len(sig) != 64 {
		return nil, fmt.Errorf("no key %q or a bad signature", header.Kid)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(key, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return nil, errors.New("signature does not verify")
	}
	var claims map[string]any
	payload, err := b64.DecodeString(parts[1])
	if err != nil || json.Unmarshal(payload, &claims) != nil {
		return nil, errors.New("payload")
	}
	claims["typ_header"] = strings.ToLower(header.Typ)
	return claims, nil
}

// --- the load ---------------------------------------------------------------

// sample: one operation's latencies, µs (authorize and token only for flows).
type sample struct{ total, authorize, token int64 }

type tally struct {
	mu       sync.Mutex
	samples  []sample
	bad      atomic.Int64
	firstBad atomic.Value
}

func (t *tally) fail(err error) {
	t.bad.Add(1)
	t.firstBad.CompareAndSwap(nil, strings.Join(strings.Fields(err.Error()), " "))
}

// run: c workers calling op until the deadline or until op says stop; only
// what completes before the deadline counts. The elapsed time is the
// duration, or until the last completion when op stopped first.
func run(c int, d time.Duration, op func(worker int) (sample, bool, error)) (*tally, time.Duration, bool) {
	t := &tally{}
	start := time.Now()
	deadline := start.Add(d)
	var last atomic.Int64
	var stopped atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var mine []sample
			for time.Now().Before(deadline) {
				s, more, err := op(w)
				if !more {
					stopped.Store(true)
					break
				}
				now := time.Now()
				if now.After(deadline) {
					break
				}
				last.Store(int64(now.Sub(start)))
				if err != nil {
					t.fail(err)
					continue
				}
				mine = append(mine, s)
			}
			t.mu.Lock()
			t.samples = append(t.samples, mine...)
			t.mu.Unlock()
		}(w)
	}
	wg.Wait()
	elapsed := d
	if stopped.Load() && last.Load() > 0 {
		elapsed = time.Duration(last.Load())
	}
	return t, elapsed, stopped.Load()
}

// nearest-rank percentile of sorted values
func pct(v []int64, p float64) int64 {
	if len(v) == 0 {
		return 0
	}
	r := int(float64(len(v))*p + 0.999999)
	r = max(1, min(r, len(v)))
	return v[r-1]
}

func report(t *tally, elapsed time.Duration, exhausted bool, legs bool) {
	n := len(t.samples)
	col := func(f func(sample) int64) []int64 {
		v := make([]int64, n)
		for i, s := range t.samples {
			v[i] = f(s)
		}
		slices.Sort(v)
		return v
	}
	total := col(func(s sample) int64 { return s.total })
	fmt.Printf("BENCH_RESULT rps=%.1f p50_us=%d p90_us=%d p99_us=%d ok=%d bad=%d elapsed_s=%.3f exhausted=%d",
		float64(n)/elapsed.Seconds(), pct(total, .5), pct(total, .9), pct(total, .99), n, t.bad.Load(),
		elapsed.Seconds(), map[bool]int{false: 0, true: 1}[exhausted])
	if legs {
		a, k := col(func(s sample) int64 { return s.authorize }), col(func(s sample) int64 { return s.token })
		fmt.Printf(" authorize_p50_us=%d authorize_p99_us=%d token_p50_us=%d token_p99_us=%d",
			pct(a, .5), pct(a, .99), pct(k, .5), pct(k, .99))
	}
	fmt.Println()
	if f := t.firstBad.Load(); f != nil {
		fmt.Printf("BENCH_FIRST_BAD %.300s\n", f)
	}
}

func flows(args []string) {
	fs := flag.NewFlagSet("flows", flag.ExitOnError)
	newProvider := providerFlags(fs)
	cookieFile := fs.String("cookies", "", "file with the Cookie header line (benchapp login)")
	d := fs.Duration("d", 10*time.Second, "duration")
	mintN := fs.Int("mint", 0, "run this many flows and write their refresh tokens (-out)")
	out := fs.String("out", "-", "refresh tokens, with -mint")
	fs.Parse(args)
	p := newProvider()
	raw, err := os.ReadFile(*cookieFile)
	fail(err)
	cookie := strings.TrimSpace(string(raw))
	var minted []string
	var mintMu sync.Mutex
	var started atomic.Int64
	want := []string{"access_token", "id_token"}
	if *mintN > 0 {
		want = append(want, "refresh_token")
		*d = 24 * time.Hour
	}
	flow := func(int) (sample, bool, error) {
		if *mintN > 0 && started.Add(1) > int64(*mintN) {
			return sample{}, false, nil
		}
		u, verifier, state, _ := p.request()
		t0 := time.Now()
		req, err := http.NewRequest("GET", u, nil)
		if err != nil {
			return sample{}, true, err
		}
		req.Header.Set("Cookie", cookie)
		resp, err := p.hc.Do(req)
		if err != nil {
			return sample{}, true, err
		}
		code, err := p.codeFrom(resp, state)
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
		resp.Body.Close()
		if err != nil {
			return sample{}, true, err
		}
		t1 := time.Now()
		body, err := p.post(p.codeForm(code, verifier), want...)
		if err != nil {
			return sample{}, true, err
		}
		t2 := time.Now()
		if *mintN > 0 {
			var tr struct {
				RefreshToken string `json:"refresh_token"`
			}
			if err := json.Unmarshal(body, &tr); err != nil || tr.RefreshToken == "" {
				return sample{}, true, fmt.Errorf("token: no refresh_token in %.200s", body)
			}
			mintMu.Lock()
			minted = append(minted, tr.RefreshToken)
			mintMu.Unlock()
		}
		return sample{t2.Sub(t0).Microseconds(), t1.Sub(t0).Microseconds(), t2.Sub(t1).Microseconds()}, true, nil
	}
	t, elapsed, stopped := run(p.conns, *d, flow)
	if *mintN == 0 {
		report(t, elapsed, false, true)
		return
	}
	if t.bad.Load() > 0 || len(minted) != *mintN || !stopped {
		fail(fmt.Errorf("mint: %d of %d refresh tokens; first failure: %v", len(minted), *mintN, t.firstBad.Load()))
	}
	writeLines(*out, minted)
	fmt.Fprintf(os.Stderr, "benchapp flows: minted %d refresh tokens in %.1f s\n", len(minted), elapsed.Seconds())
}

func refresh(args []string) {
	fs := flag.NewFlagSet("refresh", flag.ExitOnError)
	issuer := fs.String("issuer", "", "issuer URL")
	client := fs.String("client", "", "client id (a public client)")
	poolFile := fs.String("pool", "", "refresh tokens, one a line, each used once")
	c := fs.Int("c", 32, "concurrent connections")
	d := fs.Duration("d", 10*time.Second, "duration")
	fs.Parse(args)
	tr := &http.Transport{MaxIdleConnsPerHost: *c, MaxConnsPerHost: *c, DisableCompression: true}
	p := &provider{issuer: strings.TrimSuffix(*issuer, "/"), client: *client, hc: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
	var meta struct {
		Token string `json:"token_endpoint"`
	}
	fail(p.getJSON(p.issuer+"/.well-known/openid-configuration", &meta))
	p.token = meta.Token
	raw, err := os.ReadFile(*poolFile)
	fail(err)
	pool := strings.Fields(string(raw))
	var next atomic.Int64
	prefix := "grant_type=refresh_token&client_id=" + url.QueryEscape(p.client) + "&refresh_token="
	t, elapsed, stopped := run(*c, *d, func(int) (sample, bool, error) {
		i := next.Add(1) - 1
		if i >= int64(len(pool)) {
			return sample{}, false, nil
		}
		t0 := time.Now()
		if _, err := p.post(prefix+url.QueryEscape(pool[i]), "access_token", "refresh_token"); err != nil {
			return sample{}, true, err
		}
		return sample{total: time.Since(t0).Microseconds()}, true, nil
	})
	report(t, elapsed, stopped, false)
}
