// oracle renders Go templates exactly as oc observe's template argument does: the object is
// decoded as an unstructured object (integers int64, other numbers float64), then handed to
// k8s.io/cli-runtime's GoTemplatePrinter (the printer behind -o go-template, with kubectl's
// extra functions, its JSON round trip and its missingkey option). One JSON request per line.
//
// request:  {"tmpl": base64, "obj": {...}, "strict": false} - the template as bytes (base64 in
// JSON), so templates that are not UTF-8 reach the printer unchanged.
// response: {"out": base64, "err": base64, "parse": bool} - out is what the printer wrote, err the
// whole message oc prints after "error: "; both are bytes (base64 in JSON), so output that is
// not UTF-8 (base64decode can make such) compares byte for byte.
//
// With the single argument "version" it prints the Go version it was built with; with "unicode"
// it prints, as "first last print alnum" lines, the runs of code points that Go's
// strconv.IsPrint or unicode.IsLetter/IsDigit accept (what the lexer and the quoting use).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"unicode"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/printers"
)

type req struct {
	Tmpl   []byte          `json:"tmpl"`
	Obj    json.RawMessage `json:"obj"`
	Strict bool            `json:"strict"`
}

type resp struct {
	Out   []byte `json:"out"`
	Err   []byte `json:"err"`
	Parse bool   `json:"parse"`
}

func run(r req) resp {
	// oc's client decodes watch objects with the unstructured JSON scheme.
	obj, err := kruntime.Decode(unstructured.UnstructuredJSONScheme, r.Obj)
	if err != nil {
		return resp{Err: []byte("decode: " + err.Error())}
	}
	// genericclioptions.GoTemplatePrintFlags.ToPrinter, minus the file handling.
	p, err := printers.NewGoTemplatePrinter(r.Tmpl)
	if err != nil {
		return resp{Err: fmt.Appendf(nil, "error parsing template %s, %v", r.Tmpl, err), Parse: true}
	}
	p.AllowMissingKeys(!r.Strict)
	var buf bytes.Buffer
	if err := p.PrintObj(obj, &buf); err != nil {
		// oc observe's calculateArguments wraps the printer error so.
		return resp{Err: fmt.Appendf(nil, "unable to write arguments: %v", err)}
	}
	return resp{Out: buf.Bytes()}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println(runtime.Version())
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "unicode" {
		printUnicode()
		return
	}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	for sc.Scan() {
		var r req
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			panic(err)
		}
		if err := enc.Encode(run(r)); err != nil {
			panic(err)
		}
	}
	if err := sc.Err(); err != nil {
		panic(err)
	}
}

func printUnicode() {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	start, last := rune(-1), [2]bool{}
	for r := rune(0); r <= unicode.MaxRune+1; r++ {
		cur := [2]bool{}
		if r <= unicode.MaxRune {
			cur = [2]bool{strconv.IsPrint(r), unicode.IsLetter(r) || unicode.IsDigit(r)}
		}
		if cur != last || r > unicode.MaxRune {
			if start >= 0 && (last[0] || last[1]) {
				fmt.Fprintf(out, "%d %d %t %t\n", start, r-1, last[0], last[1])
			}
			start, last = r, cur
		}
	}
}
