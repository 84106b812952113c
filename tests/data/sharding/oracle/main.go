// Command oracle answers questions about the apiserver's sharded list and watch (KEP-5866)
// with the apiserver's own code, so fastobs's hash ranges can be checked against it.
//
// Each input line is a JSON object; each gets one JSON line back:
//
//	{"hash": "value"}                                   -> {"hash": "0123456789abcdef"}
//	{"selector": "...", "uid": "...", "namespace": "..."} -> {"match": true} or {"error": "..."}
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	apisharding "k8s.io/apimachinery/pkg/sharding"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/sharding"
)

type object struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
}

func (o *object) DeepCopyObject() runtime.Object {
	return &object{TypeMeta: o.TypeMeta, ObjectMeta: *o.ObjectMeta.DeepCopy()}
}

type request struct {
	Hash      *string `json:"hash"`
	Selector  string  `json:"selector"`
	UID       string  `json:"uid"`
	Namespace string  `json:"namespace"`
}

func answer(req request) map[string]any {
	if req.Hash != nil {
		return map[string]any{"hash": apisharding.HashField(*req.Hash)}
	}
	sel, err := sharding.Parse(req.Selector)
	if err != nil {
		return map[string]any{"error": err.Error()}
	}
	obj := &object{ObjectMeta: metav1.ObjectMeta{UID: types.UID(req.UID), Namespace: req.Namespace, Name: "x"}}
	ok, err := sel.Matches(obj)
	if err != nil {
		return map[string]any{"error": err.Error()}
	}
	return map[string]any{"match": ok}
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		var req request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			fmt.Fprintf(os.Stderr, "oracle: bad input: %v\n", err)
			os.Exit(2)
		}
		line, _ := json.Marshal(answer(req))
		out.Write(append(line, '\n'))
	}
}
