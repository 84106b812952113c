// goref prints what Go's standard library gives for the inputs on stdin, so that tests can
// compare fastobs's Python re-implementations with the real thing.
//
// stdin:  {"quote": [base64 bytes...], "fmtv": [numbers...], "json": [values...], "tsv": [unix seconds...], "signal": [numbers...], "errno": [numbers...]}
// stdout: {"quote": [strconv.Quote...], "fmtv": [fmt %v...], "json": [json.Marshal...], "tsv": [RFC 3339...], "signal": [names...], "errno": [texts...]}
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

type request struct {
	Quote  [][]byte          `json:"quote"`
	Fmtv   []float64         `json:"fmtv"`
	JSON   []json.RawMessage `json:"json"`
	Tsv    []int64           `json:"tsv"`
	Signal []int             `json:"signal"`
	Errno  []int             `json:"errno"`
}

type response struct {
	Quote  []string `json:"quote"`
	Fmtv   []string `json:"fmtv"`
	JSON   []string `json:"json"`
	Tsv    []string `json:"tsv"`
	Signal []string `json:"signal"`
	Errno  []string `json:"errno"`
}

// unstructured mirrors k8s.io/apimachinery's JSON decoding: integers become int64, other numbers float64.
func unstructured(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, e := range t {
			t[k] = unstructured(e)
		}
		return t
	case []interface{}:
		for i, e := range t {
			t[i] = unstructured(e)
		}
		return t
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i
		}
		f, _ := t.Float64()
		return f
	}
	return v
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		panic(err)
	}
	resp := response{Quote: []string{}, Fmtv: []string{}, JSON: []string{}, Tsv: []string{}, Signal: []string{}, Errno: []string{}}
	for _, b := range req.Quote {
		resp.Quote = append(resp.Quote, strconv.Quote(string(b)))
	}
	for _, f := range req.Fmtv {
		resp.Fmtv = append(resp.Fmtv, fmt.Sprint(f))
	}
	for _, raw := range req.JSON {
		var v interface{}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			panic(err)
		}
		out, err := json.Marshal(unstructured(v))
		if err != nil {
			panic(err)
		}
		resp.JSON = append(resp.JSON, string(out))
	}
	for _, s := range req.Tsv {
		resp.Tsv = append(resp.Tsv, time.Unix(s, 0).Format(time.RFC3339))
	}
	for _, n := range req.Signal {
		resp.Signal = append(resp.Signal, syscall.Signal(n).String())
	}
	for _, n := range req.Errno {
		resp.Errno = append(resp.Errno, syscall.Errno(n).Error())
	}
	if err := json.NewEncoder(os.Stdout).Encode(resp); err != nil {
		panic(err)
	}
}
