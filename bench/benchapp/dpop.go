package main

// benchapp dpop -url URL -client ID -secret S -form BODY -n N [-out FILE]
//
//	Writes N vegeta targets (JSON lines), each a POST of BODY to the token
//	endpoint URL with HTTP Basic and a DPoP proof (RFC 9449) of its own:
//	one ES256 key for all (a client keeps its key), a fresh jti and the
//	current iat in each, since the token server accepts a jti once. Made
//	before the measured time, so signing is not the load generator's cost.

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
	"os"
	"time"
)

var b64 = base64.RawURLEncoding

func dpop(args []string) {
	fs := flag.NewFlagSet("dpop", flag.ExitOnError)
	url := fs.String("url", "", "token endpoint (the proofs' htu)")
	client := fs.String("client", "", "client id")
	secret := fs.String("secret", "", "client secret")
	form := fs.String("form", "grant_type=client_credentials", "form body")
	n := fs.Int("n", 1000, "targets to write")
	out := fs.String("out", "-", "output file")
	fs.Parse(args)
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
	prefix := b64.EncodeToString(header) + "."
	basic := base64.StdEncoding.EncodeToString([]byte(*client + ":" + *secret))
	w := os.Stdout
	if *out != "-" {
		f, err := os.Create(*out)
		fail(err)
		defer f.Close()
		w = f
	}
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	jti := make([]byte, 16)
	for i := 0; i < *n; i++ {
		_, err := rand.Read(jti)
		fail(err)
		claims, err := json.Marshal(map[string]any{"jti": b64.EncodeToString(jti), "htm": "POST", "htu": *url, "iat": time.Now().Unix()})
		fail(err)
		input := prefix + b64.EncodeToString(claims)
		digest := sha256.Sum256([]byte(input))
		r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
		fail(err)
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		fail(enc.Encode(map[string]any{
			"method": "POST", "url": *url, "body": base64.StdEncoding.EncodeToString([]byte(*form)),
			"header": map[string][]string{
				"Authorization": {"Basic " + basic},
				"Content-Type":  {"application/x-www-form-urlencoded"},
				"DPoP":          {input + "." + b64.EncodeToString(sig)},
			},
		}))
	}
	fail(bw.Flush())
}

func fail(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchapp:", err)
		os.Exit(1)
	}
}
