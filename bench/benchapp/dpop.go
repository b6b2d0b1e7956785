package main

// benchapp dpop -url URL -client ID -secret S -form BODY -n N [-out FILE]
//
//	Writes N vegeta targets (JSON lines), each a POST of BODY to the token
//	endpoint URL with HTTP Basic and a DPoP proof (RFC 9449) of its own:
//	one ES256 key for all (a client keeps its key), a fresh jti and the
//	current iat in each, since the token server accepts a jti once. Made
//	before the measured time, so signing is not the load generator's cost.
//
// benchapp dpop-resource -token-url URL -client ID -secret S -form BODY -url RESOURCE -n N [-out FILE]
//
//	Gets one DPoP-bound access token from the token endpoint (POST BODY
//	with HTTP Basic and a proof of a new ES256 key), then writes N vegeta
//	targets, each a GET of RESOURCE with `Authorization: DPoP <token>` and
//	a proof of its own for it (htm GET, htu RESOURCE without its query, ath
//	of the token, a fresh jti: a sidecar accepts a proof once). The proofs'
//	iat is when they are written: a sidecar takes them for 60 s.

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

var b64 = base64.RawURLEncoding

// prover signs DPoP proofs with one ES256 key.
type prover struct {
	key    *ecdsa.PrivateKey
	prefix string // the encoded header and the dot
	jti    []byte
}

func newProver() *prover {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fail(err)
	pub, err := key.PublicKey.ECDH()
	fail(err)
	point := pub.Bytes() // 0x04 || x || y
	header, err := json.Marshal(map[string]any{
		"typ": "dpop+jwt", "alg": "ES256",
		"jwk": map[string]string{"kty": "EC", "crv": "P-256", "x": b64.EncodeToString(point[1:33]), "y": b64.EncodeToString(point[33:])},
	})
	fail(err)
	return &prover{key: key, prefix: b64.EncodeToString(header) + ".", jti: make([]byte, 16)}
}

// proof for a request to htu with htm; with the access token's ath when
// token is not empty.
func (p *prover) proof(htm, htu, token string) string {
	_, err := rand.Read(p.jti)
	fail(err)
	claims := map[string]any{"jti": b64.EncodeToString(p.jti), "htm": htm, "htu": htu, "iat": time.Now().Unix()}
	if token != "" {
		ath := sha256.Sum256([]byte(token))
		claims["ath"] = b64.EncodeToString(ath[:])
	}
	body, err := json.Marshal(claims)
	fail(err)
	input := p.prefix + b64.EncodeToString(body)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, p.key, digest[:])
	fail(err)
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + b64.EncodeToString(sig)
}

// targets opens out ("-": stdout) for vegeta targets, one JSON object a line.
func targets(out string) (*json.Encoder, func()) {
	w := os.Stdout
	var f *os.File
	if out != "-" {
		var err error
		f, err = os.Create(out)
		fail(err)
		w = f
	}
	bw := bufio.NewWriter(w)
	return json.NewEncoder(bw), func() {
		fail(bw.Flush())
		if f != nil {
			fail(f.Close())
		}
	}
}

// grantFlags are the flags of a subcommand that asks the token endpoint for
// tokens with client_secret_basic and writes n of something to out.
type grantFlags struct {
	client, secret, form, out *string
	n                         *int
}

func newGrantFlags(fs *flag.FlagSet, what string) grantFlags {
	return grantFlags{
		client: fs.String("client", "", "client id"),
		secret: fs.String("secret", "", "client secret"),
		form:   fs.String("form", "grant_type=client_credentials", "form body"),
		n:      fs.Int("n", 1000, what+" to write"),
		out:    fs.String("out", "-", "output file"),
	}
}

func dpop(args []string) {
	fs := flag.NewFlagSet("dpop", flag.ExitOnError)
	url := fs.String("url", "", "token endpoint (the proofs' htu)")
	g := newGrantFlags(fs, "targets")
	fs.Parse(args)
	p := newProver()
	basic := base64.StdEncoding.EncodeToString([]byte(*g.client + ":" + *g.secret))
	enc, done := targets(*g.out)
	for i := 0; i < *g.n; i++ {
		fail(enc.Encode(map[string]any{
			"method": "POST", "url": *url, "body": base64.StdEncoding.EncodeToString([]byte(*g.form)),
			"header": map[string][]string{
				"Authorization": {"Basic " + basic},
				"Content-Type":  {"application/x-www-form-urlencoded"},
				"DPoP":          {p.proof("POST", *url, "")},
			},
		}))
	}
	done()
}

func dpopResource(args []string) {
	fs := flag.NewFlagSet("dpop-resource", flag.ExitOnError)
	tokenURL := fs.String("token-url", "", "token endpoint")
	resource := fs.String("url", "", "the resource to call (GET)")
	g := newGrantFlags(fs, "targets")
	fs.Parse(args)
	p := newProver()
	req, err := http.NewRequest("POST", *tokenURL, strings.NewReader(*g.form))
	fail(err)
	req.SetBasicAuth(*g.client, *g.secret)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("DPoP", p.proof("POST", *tokenURL, ""))
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	fail(err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var v struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(b, &v) != nil || !strings.EqualFold(v.TokenType, "DPoP") {
		fail(fmt.Errorf("no DPoP-bound token: HTTP %d: %.200s", resp.StatusCode, b))
	}
	u, err := url.Parse(*resource)
	fail(err)
	htu := u.Scheme + "://" + u.Host + u.EscapedPath()
	enc, done := targets(*g.out)
	for i := 0; i < *g.n; i++ {
		fail(enc.Encode(map[string]any{
			"method": "GET", "url": *resource,
			"header": map[string][]string{
				"Authorization": {"DPoP " + v.AccessToken},
				"DPoP":          {p.proof("GET", htu, v.AccessToken)},
			},
		}))
	}
	done()
}

func fail(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchapp:", err)
		os.Exit(1)
	}
}
