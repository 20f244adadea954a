package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"
)

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Time        time.Time
	Action      string
	Package     string
	ImportPath  string // build-output, build-fail
	Test        string
	Elapsed     float64
	Output      string
	FailedBuild string
}

// Test outcomes. "incomplete" is a test that started but never finished:
// its package timed out or crashed.
const (
	statusPass       = "pass"
	statusFail       = "fail"
	statusSkip       = "skip"
	statusIncomplete = "incomplete"
)

type testResult struct {
	Package        string // relative to Complement's root, e.g. tests/csapi
	Name           string // TestFoo or TestFoo/sub/test
	Status         string
	Elapsed        time.Duration
	failedSubtests int    // at any depth
	firstRed       string // the first line Complement printed in red, kept even past the output cap
	output         strings.Builder
}

// TopLevel reports whether the test is not a subtest.
func (r *testResult) TopLevel() bool { return !strings.Contains(r.Name, "/") }

func (r *testResult) appendOutput(s string) {
	if r.firstRed == "" && strings.Contains(s, "\x1b[31m") {
		r.firstRed = s
	}
	const max = 256 << 10
	if r.output.Len() < max {
		r.output.WriteString(s)
	}
}

type packageResult struct {
	Name     string
	Status   string // ok, FAIL, panic, timeout, build failed, no tests, incomplete
	Elapsed  time.Duration
	Runs     []string        // status of each go test run of the package (reruns after a crash)
	Crashes  []string        // the panic or timeout message of each crashed run, with a few lines after
	output   strings.Builder // package-level output (build errors, panics), all runs
	runOut   strings.Builder // the same, this run only
	crash    []string        // this run: the unindented "panic:" line and the trace after it
	tests    map[string]*testResult
	order    []string
	finished bool
}

// results accumulates a `go test -json` stream.
type results struct {
	modulePrefix string // "github.com/matrix-org/complement/"
	pkgs         map[string]*packageResult
	pkgOrder     []string
	buildOutput  map[string]*strings.Builder // import path → build output

	// onTestDone and onPackageDone, if set, are called as results arrive.
	onTestDone    func(*testResult)
	onPackageDone func(*packageResult)
}

func newResults(modulePrefix string) *results {
	return &results{modulePrefix: modulePrefix, pkgs: map[string]*packageResult{}, buildOutput: map[string]*strings.Builder{}}
}

func (rs *results) relPackage(p string) string {
	if p == strings.TrimSuffix(rs.modulePrefix, "/") {
		return "."
	}
	return strings.TrimPrefix(p, rs.modulePrefix)
}

func (rs *results) pkg(name string) *packageResult {
	p := rs.pkgs[name]
	if p == nil {
		p = &packageResult{Name: name, tests: map[string]*testResult{}}
		rs.pkgs[name] = p
		rs.pkgOrder = append(rs.pkgOrder, name)
	}
	return p
}

// read consumes a `go test -json` stream until EOF, copying it to raw and
// each package's output as plain text (as go test -v prints it) to
// text(package). Lines that are not JSON (go test writes some errors as
// plain text) go to text("").
func (rs *results) read(r io.Reader, raw io.Writer, text func(pkg string) io.Writer) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if raw != nil {
			raw.Write(line)
			raw.Write([]byte("\n"))
		}
		var ev event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			if text != nil {
				fmt.Fprintf(text(""), "%s\n", line)
			}
			continue
		}
		if text != nil && (ev.Action == "output" || ev.Action == "build-output") {
			pkg := ev.Package
			if pkg == "" {
				pkg = ev.ImportPath
			}
			io.WriteString(text(rs.relPackage(pkg)), ev.Output)
		}
		rs.add(ev)
	}
	return sc.Err()
}

func (rs *results) add(ev event) {
	switch ev.Action {
	case "build-output":
		b := rs.buildOutput[ev.ImportPath]
		if b == nil {
			b = &strings.Builder{}
			rs.buildOutput[ev.ImportPath] = b
		}
		b.WriteString(ev.Output)
		return
	case "build-fail":
		return
	}
	if ev.Package == "" {
		return
	}
	p := rs.pkg(rs.relPackage(ev.Package))
	if ev.Action == "output" {
		// test2json gives a panic's output to whichever test was running.
		switch {
		case p.crash == nil && (strings.HasPrefix(ev.Output, "panic: ") || strings.HasPrefix(ev.Output, "fatal error: ")):
			p.crash = []string{strings.TrimRight(stripANSI(ev.Output), "\n")}
		case p.crash != nil && len(p.crash) < 60:
			p.crash = append(p.crash, strings.TrimRight(stripANSI(ev.Output), "\n"))
		}
	}
	if ev.Test == "" {
		switch ev.Action {
		case "start":
			p.runOut.Reset()
			p.crash = nil
			p.finished = false
		case "output":
			p.output.WriteString(ev.Output)
			p.runOut.WriteString(ev.Output)
		case "pass", "fail", "skip":
			p.Elapsed += time.Duration(ev.Elapsed * float64(time.Second))
			p.finished = true
			status := rs.packageStatus(p, ev)
			p.Runs = append(p.Runs, status)
			if status == "panic" || status == "timeout" {
				p.Crashes = append(p.Crashes, strings.Join(p.crash, "\n"))
			}
			if len(p.Runs) == 1 || status != "no tests" {
				p.Status = status
			}
			// Tests still running when the package ended never finish.
			for _, t := range p.tests {
				if t.Status == "" {
					t.Status = statusIncomplete
				}
			}
			if rs.onPackageDone != nil {
				rs.onPackageDone(p)
			}
		}
		return
	}
	t := p.tests[ev.Test]
	if t == nil {
		t = &testResult{Package: p.Name, Name: ev.Test}
		p.tests[ev.Test] = t
		p.order = append(p.order, ev.Test)
	}
	switch ev.Action {
	case "output":
		t.appendOutput(ev.Output)
	case "pass", "fail", "skip":
		t.Status = ev.Action
		t.Elapsed = time.Duration(ev.Elapsed * float64(time.Second))
		if ev.Action == "fail" {
			for parent := ev.Test; strings.Contains(parent, "/"); {
				parent = parent[:strings.LastIndex(parent, "/")]
				if pt := p.tests[parent]; pt != nil {
					pt.failedSubtests++
				}
			}
		}
		if rs.onTestDone != nil {
			rs.onTestDone(t)
		}
	}
}

func (rs *results) packageStatus(p *packageResult, ev event) string {
	out := p.runOut.String()
	switch {
	case ev.Action == "pass":
		return "ok"
	case ev.Action == "skip":
		return "no tests"
	case ev.FailedBuild != "":
		if b := rs.buildOutput[ev.FailedBuild]; b != nil {
			p.output.WriteString(b.String())
			p.runOut.WriteString(b.String())
		}
		return "build failed"
	case strings.Contains(out, "build failed") || strings.Contains(out, "setup failed"):
		return "build failed"
	case len(p.crash) > 0 && strings.HasPrefix(p.crash[0], "panic: test timed out"):
		return "timeout"
	case len(p.crash) > 0:
		return "panic"
	}
	return "FAIL"
}

// topLevelNames lists the top-level tests that started, in any run.
func (p *packageResult) topLevelNames() []string {
	var out []string
	for _, n := range p.order {
		if !strings.Contains(n, "/") {
			out = append(out, n)
		}
	}
	return out
}

// DisplayStatus is the status with the crashed runs before it, as in
// "panic, then FAIL".
func (p *packageResult) DisplayStatus() string {
	if len(p.Runs) <= 1 {
		return p.Status
	}
	return strings.Join(p.Runs, ", then ")
}

// finish marks unfinished tests and packages, after the stream ended.
func (rs *results) finish() {
	for _, p := range rs.pkgs {
		if !p.finished {
			p.Status = "incomplete"
		}
		for _, t := range p.tests {
			if t.Status == "" {
				t.Status = statusIncomplete
			}
		}
	}
}

// all returns every test result, in a stable order: package, then the
// order in which tests started.
func (rs *results) all() []*testResult {
	var out []*testResult
	for _, pn := range rs.sortedPackages() {
		p := rs.pkgs[pn]
		for _, tn := range p.order {
			out = append(out, p.tests[tn])
		}
	}
	return out
}

func (rs *results) sortedPackages() []string {
	names := append([]string(nil), rs.pkgOrder...)
	sort.Strings(names)
	return names
}

type counts struct{ pass, fail, skip int }

func (c *counts) add(status string) {
	switch status {
	case statusPass:
		c.pass++
	case statusSkip:
		c.skip++
	default:
		c.fail++
	}
}

func (p *packageResult) counts() (top, sub counts) {
	for _, t := range p.tests {
		if t.TopLevel() {
			top.add(t.Status)
		} else {
			sub.add(t.Status)
		}
	}
	return top, sub
}

var (
	ansiRE     = regexp.MustCompile("\x1b\\[[0-9;]*m")
	fileLineRE = regexp.MustCompile(`^\s*[\w.-]+\.go:\d+: `)
)

func stripANSI(s string) string { return ansiRE.ReplaceAllString(s, "") }

// reason picks the line that best explains a failure or a skip: the first
// line Complement printed in red (ct.Errorf/ct.Fatalf); else, for a test
// whose subtests failed, a pointer to them; else the first t.Error/t.Skip
// style line that is not a request log, a warning or a deployer note.
func (r *testResult) reason() string {
	if r.firstRed != "" {
		return clean(r.firstRed)
	}
	lines := strings.Split(r.output.String(), "\n")
	if r.failedSubtests > 0 && r.Status != statusSkip {
		return fmt.Sprintf("(%d subtests failed)", r.failedSubtests)
	}
	var candidate string
	for _, l := range lines {
		if !fileLineRE.MatchString(l) || strings.Contains(l, "[CSAPI]") || strings.Contains(l, "palpodeploy: ") || strings.Contains(l, "WARNING: ") {
			continue
		}
		if r.Status == statusSkip || strings.Contains(strings.ToLower(l), "fail") || strings.Contains(l, "error") {
			return clean(l)
		}
		if candidate == "" {
			candidate = l
		}
	}
	if r.Status == statusIncomplete {
		return "did not finish (package timed out or crashed)"
	}
	return clean(candidate)
}

func clean(l string) string {
	l = strings.TrimSpace(stripANSI(l))
	if len(l) > 300 {
		l = l[:300] + "…"
	}
	return l
}
