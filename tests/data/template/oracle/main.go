// oracle renders JSONPath templates with client-go's own jsonpath package, one JSON request
// per input line, so tests can compare fastobs's port with the original on many cases.
//
// request:  {"tmpl": "...", "obj": {...}, "strict": false, "json": false}
// response: {"out": "...", "err": "...", "parse": true|false, "panic": "panic"|""}
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"

	"k8s.io/client-go/util/jsonpath"
)

type req struct {
	Tmpl   string          `json:"tmpl"`
	Obj    json.RawMessage `json:"obj"`
	Strict bool            `json:"strict"`
	AsJSON bool            `json:"json"`
}

type resp struct {
	Out   string `json:"out"`
	Err   string `json:"err"`
	Parse bool   `json:"parse"`
	Panic string `json:"panic"`
}

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

func run(r req) (out resp) {
	defer func() {
		if p := recover(); p != nil {
			out = resp{Panic: "panic"}
		}
	}()
	var v interface{}
	dec := json.NewDecoder(bytes.NewReader(r.Obj))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		panic(err)
	}
	v = unstructured(v)
	j := jsonpath.New("out")
	if err := j.Parse(r.Tmpl); err != nil {
		return resp{Err: err.Error(), Parse: true}
	}
	j.AllowMissingKeys(!r.Strict)
	if r.AsJSON {
		j.EnableJSONOutput(true)
	}
	var buf bytes.Buffer
	if err := j.Execute(&buf, v); err != nil {
		return resp{Err: err.Error()}
	}
	return resp{Out: buf.String()}
}

func main() {
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	enc := json.NewEncoder(os.Stdout)
	for sc.Scan() {
		var r req
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			panic(err)
		}
		enc.Encode(run(r))
	}
}
