package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// passingList is tests/complement/passing.txt: "package test" per line, for
// example "tests/csapi TestLogin/parallel/POST_/login_..."; # starts a comment.
type passingList map[string]bool

func passingKey(pkg, test string) string { return pkg + " " + test }

func readPassing(path string) (passingList, error) {
	l := passingList{}
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return l, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		pkg, test, ok := strings.Cut(line, " ")
		if !ok {
			return nil, fmt.Errorf("%s: bad line %q (want \"package test\")", path, line)
		}
		l[passingKey(pkg, strings.TrimSpace(test))] = true
	}
	return l, sc.Err()
}

const passingHeader = `# Complement tests that pass against Palpo: "package test" per line.
# The runner reports any of these that no longer passes as a regression.
# Regenerate after a run with: tests/complement/run.sh -update-passing [packages]
# (only the tests that ran are added or removed; the rest are kept).
`

// update adds the tests that passed and removes those that ran and did
// not pass. With complete (no -run/-skip filter), it also removes the
// listed tests of every package that ran which did not run at all.
func (l passingList) update(rs *results, complete bool) {
	if complete {
		for k := range l {
			pkg, test, _ := strings.Cut(k, " ")
			if p := rs.pkgs[pkg]; p != nil && p.tests[test] == nil {
				delete(l, k)
			}
		}
	}
	for _, t := range rs.all() {
		k := passingKey(t.Package, t.Name)
		if t.Status == statusPass {
			l[k] = true
		} else {
			delete(l, k)
		}
	}
}

func (l passingList) write(path string) error {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(passingHeader)
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('\n')
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

type regression struct {
	Key    string
	Status string // fail, skip, incomplete, missing
	Reason string
}

// regressions lists the listed tests that ran and did not pass. With
// complete set (no -run/-skip filter), a listed test of a package that ran
// but that never appeared is reported as missing too.
func (l passingList) regressions(rs *results, complete bool) []regression {
	seen := map[string]*testResult{}
	for _, t := range rs.all() {
		seen[passingKey(t.Package, t.Name)] = t
	}
	var out []regression
	for k := range l {
		t := seen[k]
		if t == nil {
			pkg, _, _ := strings.Cut(k, " ")
			if complete && rs.pkgs[pkg] != nil {
				out = append(out, regression{Key: k, Status: "missing", Reason: "did not run (package status: " + rs.pkgs[pkg].Status + ")"})
			}
			continue
		}
		if t.Status != statusPass {
			out = append(out, regression{Key: k, Status: t.Status, Reason: t.reason()})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

type runInfo struct {
	Started          time.Time
	Wall             time.Duration
	ComplementSource string
	Packages         []string
	GoTestArgs       []string
	OutDir           string
}

// writeSummary writes the human summary: per-package counts, totals,
// regressions, harness skips and failing tests (top-level, with how many
// of their subtests failed; failing.txt has every failing test).
func writeSummary(w io.Writer, info runInfo, rs *results, regs []regression, havePassing bool) {
	fmt.Fprintf(w, "Complement against Palpo — %s, wall time %v\n", info.Started.Format("2006-01-02 15:04:05 MST"), info.Wall.Round(time.Second))
	fmt.Fprintf(w, "complement: %s\n", info.ComplementSource)
	fmt.Fprintf(w, "go test %s\n", strings.Join(info.GoTestArgs, " "))
	fmt.Fprintf(w, "output: %s\n\n", info.OutDir)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "package\tstatus\ttime\ttests pass\tfail\tskip\tsubtests pass\tfail\tskip\t")
	var top, sub counts
	for _, pn := range rs.sortedPackages() {
		p := rs.pkgs[pn]
		t, s := p.counts()
		top.pass, top.fail, top.skip = top.pass+t.pass, top.fail+t.fail, top.skip+t.skip
		sub.pass, sub.fail, sub.skip = sub.pass+s.pass, sub.fail+s.fail, sub.skip+s.skip
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%d\t%d\t%d\t%d\t%d\t\n", pn, p.DisplayStatus(), p.Elapsed.Round(time.Second), t.pass, t.fail, t.skip, s.pass, s.fail, s.skip)
	}
	fmt.Fprintf(tw, "TOTAL\t\t\t%d\t%d\t%d\t%d\t%d\t%d\t\n", top.pass, top.fail, top.skip, sub.pass, sub.fail, sub.skip)
	tw.Flush()

	for _, pn := range rs.sortedPackages() {
		p := rs.pkgs[pn]
		if len(p.Runs) <= 1 && (p.Status == "ok" || p.Status == "FAIL" || p.Status == "no tests") {
			continue
		}
		fmt.Fprintf(w, "\npackage %s: %s\n", pn, p.DisplayStatus())
		var excerpt []string
		for _, c := range p.Crashes {
			excerpt = append(excerpt, crashSummary(c)...)
		}
		if len(excerpt) == 0 {
			excerpt = lastLines(stripANSI(p.output.String()), 15)
		}
		for _, l := range excerpt {
			fmt.Fprintf(w, "    %s\n", l)
		}
	}

	fmt.Fprintln(w)
	if !havePassing {
		fmt.Fprintln(w, "Regressions: (no passing.txt)")
	} else if len(regs) == 0 {
		fmt.Fprintln(w, "Regressions (tests in passing.txt that did not pass): none")
	} else {
		fmt.Fprintf(w, "REGRESSIONS (tests in passing.txt that did not pass): %d\n", len(regs))
		for _, r := range regs {
			fmt.Fprintf(w, "  %s  [%s] %s\n", r.Key, r.Status, r.Reason)
		}
	}

	var harness []*testResult
	for _, t := range rs.all() {
		if t.Status == statusSkip && strings.Contains(t.output.String(), "palpo harness") {
			harness = append(harness, t)
		}
	}
	if len(harness) > 0 {
		fmt.Fprintf(w, "\nSkipped by the harness (see README, known limitations): %d\n", len(harness))
		for _, t := range harness {
			fmt.Fprintf(w, "  %s %s\n", t.Package, t.Name)
		}
	}

	failedSubs := map[string]int{}
	for _, t := range rs.all() {
		if !t.TopLevel() && t.Status != statusPass && t.Status != statusSkip {
			top, _, _ := strings.Cut(t.Name, "/")
			failedSubs[passingKey(t.Package, top)]++
		}
	}
	var failing []string
	for _, t := range rs.all() {
		if t.TopLevel() && t.Status != statusPass && t.Status != statusSkip {
			line := fmt.Sprintf("  %s %s", t.Package, t.Name)
			if n := failedSubs[passingKey(t.Package, t.Name)]; n > 0 {
				line += fmt.Sprintf(" (%d subtests failed)", n)
			}
			if t.Status == statusIncomplete {
				line += " [incomplete]"
			}
			failing = append(failing, line)
		}
	}
	fmt.Fprintf(w, "\nFailing top-level tests: %d (every failing test with its first error: failing.txt)\n", len(failing))
	for _, l := range failing {
		fmt.Fprintln(w, l)
	}
}

// writeFailing lists every failing test, subtests included, with the first
// error line of each.
func writeFailing(w io.Writer, rs *results) {
	for _, t := range rs.all() {
		if t.Status == statusPass || t.Status == statusSkip {
			continue
		}
		fmt.Fprintf(w, "%s %s [%s] %s\n", t.Package, t.Name, t.Status, t.reason())
	}
}

// crashSummary shortens a panic: its first line, and the frames in test
// files (where the failing call was made); the first lines if there are none.
func crashSummary(trace string) []string {
	lines := strings.Split(trace, "\n")
	out := []string{lines[0]}
	for i := 1; i < len(lines) && len(out) < 7; i++ {
		if strings.Contains(lines[i], "_test.go:") {
			out = append(out, lines[i-1], lines[i])
		}
	}
	if len(out) == 1 && len(lines) > 1 {
		out = lines[:min(len(lines), 12)]
	}
	return out
}

func lastLines(s string, n int) []string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}
