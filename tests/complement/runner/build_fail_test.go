package main

import (
	"io"
	"strings"
	"testing"
)

func TestBuildFailure(t *testing.T) {
	const stream = `{"ImportPath":"github.com/matrix-org/complement/tests/csapi [github.com/matrix-org/complement/tests/csapi.test]","Action":"build-output","Output":"# github.com/matrix-org/complement/tests/csapi\n"}
{"ImportPath":"github.com/matrix-org/complement/tests/csapi [github.com/matrix-org/complement/tests/csapi.test]","Action":"build-output","Output":"palpodeploy/deploy.go:2:12: undefined: x\n"}
{"ImportPath":"github.com/matrix-org/complement/tests/csapi [github.com/matrix-org/complement/tests/csapi.test]","Action":"build-fail"}
{"Action":"start","Package":"github.com/matrix-org/complement/tests/csapi"}
{"Action":"output","Package":"github.com/matrix-org/complement/tests/csapi","Output":"FAIL\tgithub.com/matrix-org/complement/tests/csapi [build failed]\n"}
{"Action":"fail","Package":"github.com/matrix-org/complement/tests/csapi","Elapsed":0,"FailedBuild":"github.com/matrix-org/complement/tests/csapi [github.com/matrix-org/complement/tests/csapi.test]"}
`
	rs := newResults(complementModule + "/")
	var text strings.Builder
	rs.read(strings.NewReader(stream), nil, func(pkg string) io.Writer { return &text })
	rs.finish()
	p := rs.pkgs["tests/csapi"]
	if p == nil || p.Status != "build failed" {
		t.Fatalf("package: %+v", p)
	}
	var sum strings.Builder
	writeSummary(&sum, runInfo{}, rs, nil, false)
	if !strings.Contains(sum.String(), "undefined: x") {
		t.Errorf("summary does not show the build error:\n%s", sum.String())
	}
	if !strings.Contains(text.String(), "undefined: x") {
		t.Errorf("output misses the build error")
	}
}
