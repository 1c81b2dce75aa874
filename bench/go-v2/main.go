// The article's service ("Profiling and optimizing Go web applications", v2: after its
// optimisations), as the reference Go net/http server for the side-by-side scripts.
//
// Standard library only (the load scripts run offline): the handler is the article's
// optimised one (the padding built in a bytes.Buffer, the response by encoding/json);
// its buffered StatsD client and access log are left out, as the sweeps run leftpad with
// `--access-log off --statsd off`.
//
//	go build -o go-v2 . && GOMAXPROCS=1 ./go-v2 -listen 127.0.0.1:8080
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"
)

const maxLen = 1024

type leftpadResponse struct {
	Str string `json:"str"`
}

// leftpad pads s on the left with chr up to length characters.
func leftpad(s string, length int, chr rune) string {
	pad := length - utf8.RuneCountInString(s)
	if pad <= 0 {
		return s
	}
	var buf bytes.Buffer
	buf.Grow(pad*utf8.RuneLen(chr) + len(s))
	for i := 0; i < pad; i++ {
		buf.WriteRune(chr)
	}
	buf.WriteString(s)
	return buf.String()
}

func leftpadHandler(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	length, err := strconv.Atoi(q.Get("len"))
	if err != nil || length < 0 || length > maxLen {
		http.Error(w, `{"error":"invalid len"}`, http.StatusBadRequest)
		return
	}
	chr := ' '
	if c := q.Get("chr"); c != "" {
		chr, _ = utf8.DecodeRuneInString(c)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	json.NewEncoder(w).Encode(leftpadResponse{leftpad(q.Get("str"), length, chr)})
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/leftpad/", leftpadHandler)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	server := &http.Server{
		Addr:              *listen,
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       75 * time.Second,
	}
	log.Fatal(server.ListenAndServe())
}
