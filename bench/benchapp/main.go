// benchapp: helpers for bench/sidecar.sh and bench/store.sh (standard library only).
//
//	benchapp serve ADDR
//	    A tiny HTTP/1.1 application: every request gets 200 and a fixed
//	    64-byte body, so the application is never the bottleneck. GET /echo
//	    answers with the Authorization header it received instead.
//	benchapp mint -url URL -client ID -secret S -form BODY -n N [-c 16] [-out FILE]
//	    Fetches N access tokens (POST URL, HTTP Basic, form BODY) with C
//	    concurrent keep-alive connections and writes one access_token a line.
//	benchapp dpop -url URL -client ID -secret S -form BODY -n N [-out FILE]
//	    Writes N vegeta targets for the token endpoint, each with a DPoP
//	    proof of its own (dpop.go).
//	benchapp dpop-resource -token-url URL -client ID -secret S -form BODY -url RESOURCE -n N [-out FILE]
//	    Gets one DPoP-bound token and writes N vegeta GET targets for
//	    RESOURCE with it, each with a proof of its own (dpop.go).
//	benchapp login | flows | refresh ...
//	    The sign-in load of bench/signin.sh: one sign-in through the login
//	    form, then whole authorization code flows, or refresh_token grants
//	    (signin.go).
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var body = []byte(`{"ok":true,"app":"tokenmesh-bench","pad":"0123456789abcdef01234"}` + "\n")

func serve(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchapp:", err)
		os.Exit(1)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		hdr := w.Header()
		if r.URL.Path == "/echo" { // what the application received, for the preflight checks
			hdr["Content-Type"] = []string{"text/plain"}
			io.WriteString(w, r.Header.Get("Authorization"))
			return
		}
		hdr["Content-Type"] = []string{"application/json"}
		hdr["Content-Length"] = []string{fmt.Sprint(len(body))}
		w.Write(body)
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "benchapp:", err)
		os.Exit(1)
	}
}

func mint(args []string) {
	fs := flag.NewFlagSet("mint", flag.ExitOnError)
	url := fs.String("url", "", "token endpoint")
	g := newGrantFlags(fs, "tokens")
	c := fs.Int("c", 16, "concurrent connections")
	fs.Parse(args)
	client, secret, form, n, out := g.client, g.secret, g.form, g.n, g.out
	tr := &http.Transport{MaxIdleConnsPerHost: *c, MaxConnsPerHost: *c}
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	tokens := make([]string, *n)
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < *c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= *n {
					return
				}
				req, _ := http.NewRequest("POST", *url, strings.NewReader(*form))
				req.SetBasicAuth(*client, *secret)
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				resp, err := hc.Do(req)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var v struct {
					AccessToken string `json:"access_token"`
				}
				if resp.StatusCode != 200 || json.Unmarshal(b, &v) != nil || v.AccessToken == "" {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("HTTP %d: %.200s", resp.StatusCode, b))
					continue
				}
				tokens[i] = v.AccessToken
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		fmt.Fprintf(os.Stderr, "benchapp mint: %d of %d failed; first: %v\n", f, *n, firstErr.Load())
		os.Exit(1)
	}
	writeLines(*out, tokens)
}

// writeLines: one a line, to the file out or stdout ("-").
func writeLines(out string, lines []string) {
	w := os.Stdout
	if out != "-" {
		f, err := os.Create(out)
		fail(err)
		defer f.Close()
		w = f
	}
	bw := bufio.NewWriter(w)
	for _, l := range lines {
		bw.WriteString(l)
		bw.WriteByte('\n')
	}
	fail(bw.Flush())
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchapp serve ADDR | benchapp mint -url URL -client ID -secret S -form BODY -n N [-c C] [-out FILE] | benchapp dpop -url URL -client ID -secret S -form BODY -n N [-out FILE] | benchapp dpop-resource -token-url URL -client ID -secret S -form BODY -url RESOURCE -n N [-out FILE] | benchapp login|flows|refresh (signin.go)")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		if len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: benchapp serve ADDR")
			os.Exit(2)
		}
		serve(os.Args[2])
	case "mint":
		mint(os.Args[2:])
	case "dpop":
		dpop(os.Args[2:])
	case "dpop-resource":
		dpopResource(os.Args[2:])
	case "login":
		login(os.Args[2:])
	case "flows":
		flows(os.Args[2:])
	case "refresh":
		refresh(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "benchapp: unknown command", os.Args[1])
		os.Exit(2)
	}
}
