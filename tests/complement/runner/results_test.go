package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const stream = `{"Action":"start","Package":"github.com/matrix-org/complement/tests/csapi"}
{"Action":"run","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestLogin"}
{"Action":"run","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestLogin/parallel/ok"}
{"Action":"pass","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestLogin/parallel/ok","Elapsed":0.1}
{"Action":"run","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestLogin/parallel/bad"}
{"Action":"output","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestLogin/parallel/bad","Output":"    client.go:10: [CSAPI] POST hs1/_matrix/client/v3/login => 404\n"}
{"Action":"output","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestLogin/parallel/bad","Output":"    login_test.go:42: \u001b[31mMustDo: got 404\u001b[39m\n"}
{"Action":"fail","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestLogin/parallel/bad","Elapsed":0.2}
{"Action":"fail","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestLogin","Elapsed":0.3}
{"Action":"run","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestOld"}
{"Action":"output","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestOld","Output":"    palpo_olddeploy.go:18: palpo harness: blueprint \"x\" needs Complement's Docker image builder\n"}
{"Action":"skip","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestOld","Elapsed":0}
{"Action":"run","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestVersions"}
{"Action":"pass","Package":"github.com/matrix-org/complement/tests/csapi","Test":"TestVersions","Elapsed":0.01}
{"Action":"fail","Package":"github.com/matrix-org/complement/tests/csapi","Elapsed":1.5}
{"Action":"start","Package":"github.com/matrix-org/complement/tests"}
{"Action":"run","Package":"github.com/matrix-org/complement/tests","Test":"TestSlow"}
{"Action":"output","Package":"github.com/matrix-org/complement/tests","Test":"TestSlow","Output":"panic: test timed out after 1s\n"}
{"Action":"fail","Package":"github.com/matrix-org/complement/tests","Elapsed":1}
`

func TestResults(t *testing.T) {
	rs := newResults(complementModule + "/")
	var text strings.Builder
	if err := rs.read(strings.NewReader(stream+"not json\n"), nil, func(string) io.Writer { return &text }); err != nil {
		t.Fatal(err)
	}
	rs.finish()
	if !strings.Contains(text.String(), "MustDo: got 404") || !strings.Contains(text.String(), "not json") {
		t.Errorf("text output misses lines:\n%s", text.String())
	}
	csapi := rs.pkgs["tests/csapi"]
	if csapi == nil || csapi.Status != "FAIL" {
		t.Fatalf("tests/csapi: %+v", csapi)
	}
	top, sub := csapi.counts()
	if top != (counts{pass: 1, fail: 1, skip: 1}) || sub != (counts{pass: 1, fail: 1}) {
		t.Errorf("counts: top %+v sub %+v", top, sub)
	}
	if got := csapi.tests["TestLogin/parallel/bad"].reason(); got != "login_test.go:42: MustDo: got 404" {
		t.Errorf("reason = %q", got)
	}
	fed := rs.pkgs["tests"]
	if fed.Status != "timeout" || fed.tests["TestSlow"].Status != statusIncomplete {
		t.Errorf("tests: status %q, TestSlow %q", fed.Status, fed.tests["TestSlow"].Status)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "passing.txt")
	os.WriteFile(path, []byte("# comment\ntests/csapi TestVersions\ntests/csapi TestLogin/parallel/bad\ntests TestGone\ntests/other TestNotRun\n"), 0o644)
	l, err := readPassing(path)
	if err != nil {
		t.Fatal(err)
	}
	regs := l.regressions(rs, true)
	var keys []string
	for _, r := range regs {
		keys = append(keys, r.Key+"="+r.Status)
	}
	if got := strings.Join(keys, ","); got != "tests TestGone=missing,tests/csapi TestLogin/parallel/bad=fail" {
		t.Errorf("regressions = %s", got)
	}
	if regs := l.regressions(rs, false); len(regs) != 1 {
		t.Errorf("filtered run: %d regressions, want 1", len(regs))
	}

	l.update(rs, false)
	if err := l.write(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	for _, want := range []string{"tests/csapi TestVersions\n", "tests/csapi TestLogin/parallel/ok\n", "tests/other TestNotRun\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("updated passing.txt lacks %q:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), "TestLogin/parallel/bad") || strings.Contains(string(b), "TestOld") {
		t.Errorf("updated passing.txt keeps a failing or skipped test:\n%s", b)
	}
	if !strings.Contains(string(b), "tests TestGone") {
		t.Errorf("filtered update dropped a test that did not run:\n%s", b)
	}
	l.update(rs, true)
	if l[passingKey("tests", "TestGone")] || !l[passingKey("tests/other", "TestNotRun")] {
		t.Errorf("complete update: TestGone kept %v, TestNotRun kept %v", l[passingKey("tests", "TestGone")], l[passingKey("tests/other", "TestNotRun")])
	}

	var sum strings.Builder
	writeSummary(&sum, runInfo{}, rs, regs, true)
	for _, want := range []string{"TestLogin (1 subtests failed)", "REGRESSIONS", "Skipped by the harness", "tests/csapi TestOld", "package tests: timeout"} {
		if !strings.Contains(sum.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, sum.String())
		}
	}
}

// A package that panics is rerun without the tests that already ran; the
// second run's results join the first's.
func TestRerunAfterPanic(t *testing.T) {
	const pkg = "github.com/matrix-org/complement/tests/csapi"
	run1 := `{"Action":"start","Package":"` + pkg + `"}
{"Action":"run","Package":"` + pkg + `","Test":"TestA"}
{"Action":"pass","Package":"` + pkg + `","Test":"TestA","Elapsed":0.1}
{"Action":"run","Package":"` + pkg + `","Test":"TestB"}
{"Action":"output","Package":"` + pkg + `","Test":"TestB","Output":"    x_test.go:3: panic: not a crash, a log line\n"}
{"Action":"output","Package":"` + pkg + `","Test":"TestB","Output":"panic: Fail in goroutine after TestB has completed\n"}
{"Action":"output","Package":"` + pkg + `","Test":"TestB","Output":"goroutine 7 [running]:\n"}
{"Action":"fail","Package":"` + pkg + `","Elapsed":2}
`
	run2 := `{"Action":"start","Package":"` + pkg + `"}
{"Action":"run","Package":"` + pkg + `","Test":"TestC"}
{"Action":"pass","Package":"` + pkg + `","Test":"TestC","Elapsed":0.1}
{"Action":"pass","Package":"` + pkg + `","Elapsed":1}
`
	rs := newResults(complementModule + "/")
	rs.read(strings.NewReader(run1), nil, nil)
	p := rs.pkgs["tests/csapi"]
	if p.Status != "panic" || strings.Join(p.topLevelNames(), ",") != "TestA,TestB" {
		t.Fatalf("after run 1: status %q, started %v", p.Status, p.topLevelNames())
	}
	rs.read(strings.NewReader(run2), nil, nil)
	rs.finish()
	top, _ := p.counts()
	if top != (counts{pass: 2, fail: 1}) || p.tests["TestB"].Status != statusIncomplete {
		t.Errorf("counts %+v, TestB %q", top, p.tests["TestB"].Status)
	}
	if p.DisplayStatus() != "panic, then ok" || len(p.Crashes) != 1 || !strings.Contains(p.Crashes[0], "Fail in goroutine") {
		t.Errorf("status %q, crashes %q", p.DisplayStatus(), p.Crashes)
	}
}

func TestNormalisePackages(t *testing.T) {
	got := strings.Join(normalisePackages([]string{"csapi", "tests/msc3902", "./tests", "./tests/...", "github.com/matrix-org/complement/tests/csapi"}), " ")
	want := "./tests/csapi ./tests/msc3902 ./tests ./tests/... ./tests/csapi"
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
