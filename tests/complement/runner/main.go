// Command runner runs Complement, the Matrix conformance suite, against
// Palpo processes on loopback addresses, and summarises the results.
//
//	go run ./tests/complement/runner [flags] [packages]
//
// It copies a Complement checkout to a scratch directory, installs the
// deployer (tests/complement/deployer) as a package of that copy, points
// every test package's TestMain at it, builds palpo, runs `go test -json` on
// the packages named (default ./tests/...) and writes, into -out:
//
//	summary.txt   per-package pass/fail/skip counts, regressions, failing tests
//	failing.txt   every failing test and subtest with its first error line
//	results.json.gz  the raw `go test -json` stream
//	output/       the plain test output of each package
//	logs/         server logs of the deployments of failed tests
//
// See tests/complement/README.md.
package main

import (
	"bufio"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	code, err := run()
	if err != nil {
		fmt.Fprintf(os.Stderr, "runner: %v\n", err)
		os.Exit(2)
	}
	os.Exit(code)
}

type options struct {
	complementDir string
	gitDir        string
	out           string
	work          string
	keep          bool
	palpoBin      string
	runRE         string
	skipRE        string
	timeout       time.Duration
	pkgParallel   int
	testParallel  int
	tags          string
	verbose       bool
	buildOnly     bool
	updatePassing bool
	selftest      bool
	noRerun       bool
	budget        time.Duration
	passingPath   string
}

func run() (int, error) {
	repo, err := findRepoRoot()
	if err != nil {
		return 0, err
	}
	here := filepath.Join(repo, "tests", "complement")
	var o options
	flag.StringVar(&o.complementDir, "complement", os.Getenv("COMPLEMENT_DIR"), "Complement checkout to copy (default $COMPLEMENT_DIR, else $COMPLEMENT_GIT_DIR, else "+defaultMirror+")")
	flag.StringVar(&o.gitDir, "complement-git", os.Getenv("COMPLEMENT_GIT_DIR"), "bare git repository of Complement to extract HEAD from")
	flag.StringVar(&o.out, "out", filepath.Join(here, "out"), "directory for the summary, results and kept server logs (emptied first)")
	flag.StringVar(&o.work, "work", "", "scratch directory (default: a new temporary directory, removed afterwards)")
	flag.BoolVar(&o.keep, "keep", false, "keep the scratch directory (the patched Complement copy can then be used with go test directly)")
	flag.StringVar(&o.palpoBin, "palpo", os.Getenv("PALPO_BIN"), "palpo binary to test (default: go build ./cmd/palpo)")
	flag.StringVar(&o.runRE, "run", "", "only run tests matching this regexp (go test -run)")
	flag.StringVar(&o.skipRE, "skip", "", "skip tests matching this regexp (go test -skip)")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "per-package timeout (go test -timeout)")
	flag.IntVar(&o.pkgParallel, "p", 2, "test packages run at the same time (go test -p)")
	flag.IntVar(&o.testParallel, "parallel", 2*runtime.NumCPU(), "parallel tests within a package (go test -parallel)")
	flag.StringVar(&o.tags, "tags", "", "build tags for Complement (go test -tags)")
	flag.BoolVar(&o.verbose, "v", false, "print all test output while running")
	flag.BoolVar(&o.buildOnly, "build-only", false, "only compile the deployer and the test packages (go vet)")
	flag.BoolVar(&o.updatePassing, "update-passing", false, "rewrite passing.txt from this run's results")
	flag.BoolVar(&o.selftest, "selftest", false, "run the deployer's own test (Deploy, Pause, Stop/Start, Restart, Destroy) instead of Complement's")
	flag.DurationVar(&o.budget, "budget", 14*time.Minute, "reruns after a crash only use what is left of this much wall time (each gets at most -timeout)")
	flag.BoolVar(&o.noRerun, "no-rerun", false, "do not rerun the rest of a package after it panicked or timed out")
	flag.StringVar(&o.passingPath, "passing", filepath.Join(here, "passing.txt"), "the list of tests expected to pass")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] [packages]\n\npackages are Complement package paths such as ./tests/csapi, tests/csapi or csapi (default ./tests/...).\n\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	pkgs := normalisePackages(flag.Args())
	if o.selftest {
		pkgs = []string{"./palpodeploy"}
	}
	started := time.Now()

	// Scratch directory.
	scratch := o.work
	if scratch == "" {
		scratch, err = os.MkdirTemp("", "palpo-complement-")
		if err != nil {
			return 0, err
		}
	} else if err := os.MkdirAll(scratch, 0o755); err != nil {
		return 0, err
	}
	if !o.keep && o.work == "" {
		defer os.RemoveAll(scratch)
	} else {
		fmt.Printf("scratch directory: %s\n", scratch)
	}
	cdir := filepath.Join(scratch, "complement")
	if err := os.RemoveAll(cdir); err != nil {
		return 0, err
	}
	source, err := prepareComplement(o.complementDir, o.gitDir, cdir)
	if err != nil {
		return 0, err
	}
	if err := installDeployer(filepath.Join(here, "deployer"), cdir); err != nil {
		return 0, err
	}
	n, err := patchTestMains(cdir)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, fmt.Errorf("found no complement.TestMain call to patch under %s/tests", cdir)
	}
	if ok, err := patchOldDeploy(cdir); err != nil {
		return 0, err
	} else if !ok {
		fmt.Fprintln(os.Stderr, "runner: warning: Complement's OldDeploy has changed; tests using blueprints will try Docker and fail")
	}
	fmt.Printf("complement: %s (%d test packages patched)\n", source, n)

	if o.buildOnly {
		args := []string{"vet"}
		if o.tags != "" {
			args = append(args, "-tags", o.tags)
		}
		args = append(args, "./palpodeploy", ".")
		args = append(args, pkgs...)
		fmt.Printf("go %s\n", strings.Join(args, " "))
		cmd := exec.Command("go", args...)
		cmd.Dir, cmd.Stdout, cmd.Stderr = cdir, os.Stdout, os.Stderr
		cmd.Env = append(os.Environ(), "COMPLEMENT_BASE_IMAGE=palpo-local-processes")
		if err := cmd.Run(); err != nil {
			return 1, nil
		}
		fmt.Println("deployer and test packages compile")
		return 0, nil
	}

	// The palpo binary.
	bin := o.palpoBin
	if bin == "" {
		bin = filepath.Join(scratch, "bin", "palpo")
		fmt.Printf("building palpo: go build -o %s ./cmd/palpo\n", bin)
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/palpo")
		cmd.Dir, cmd.Stdout, cmd.Stderr = repo, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return 0, fmt.Errorf("building palpo: %w", err)
		}
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return 0, err
	}

	// Output directory.
	if o.out, err = filepath.Abs(o.out); err != nil {
		return 0, err
	}
	if err := os.RemoveAll(o.out); err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Join(o.out, "logs"), 0o755); err != nil {
		return 0, err
	}

	// go test.
	base := []string{"test", "-json", "-count=1",
		"-p", strconv.Itoa(o.pkgParallel),
		"-parallel", strconv.Itoa(o.testParallel)}
	if o.tags != "" {
		base = append(base, "-tags", o.tags)
	}
	if o.runRE != "" {
		base = append(base, "-run", o.runRE)
	}
	args := append(append([]string(nil), base...), "-timeout", o.timeout.String())
	if o.skipRE != "" {
		args = append(args, "-skip", o.skipRE)
	}
	args = append(args, pkgs...)

	stderrFile, err := os.Create(filepath.Join(o.out, "go-test-stderr.txt"))
	if err != nil {
		return 0, err
	}
	defer stderrFile.Close()
	// The raw stream can reach hundreds of megabytes when a test polls in a
	// tight loop (every request is logged); it compresses ~50×.
	raw, err := os.Create(filepath.Join(o.out, "results.json.gz"))
	if err != nil {
		return 0, err
	}
	defer raw.Close()
	rawGz := gzip.NewWriter(raw)
	defer rawGz.Close()
	rawBuf := bufio.NewWriterSize(rawGz, 1<<20)
	defer rawBuf.Flush()
	text := &outputFiles{dir: filepath.Join(o.out, "output"), verbose: o.verbose}
	defer text.close()

	rs := newResults(complementModule + "/")
	rs.onTestDone = func(t *testResult) {
		if t.TopLevel() && !o.verbose {
			fmt.Printf("%-4s %s %s (%.1fs)\n", strings.ToUpper(t.Status), t.Package, t.Name, t.Elapsed.Seconds())
		}
	}
	rs.onPackageDone = func(p *packageResult) {
		top, sub := p.counts()
		fmt.Printf("== %s %s in %v: tests %d passed, %d failed, %d skipped; subtests %d passed, %d failed, %d skipped\n",
			p.Status, p.Name, p.Elapsed.Round(time.Second), top.pass, top.fail, top.skip, sub.pass, sub.fail, sub.skip)
	}
	gt := &goTester{
		dir: cdir,
		env: append(os.Environ(),
			"PALPO_BIN="+bin,
			"PALPO_COMPLEMENT_WORKDIR="+filepath.Join(scratch, "servers"),
			"PALPO_COMPLEMENT_LOGDIR="+filepath.Join(o.out, "logs"),
		),
		stderr: io.MultiWriter(os.Stderr, stderrFile),
		raw:    rawBuf,
		text:   text.writer,
		rs:     rs,
	}
	gt.env = setDefault(gt.env, "COMPLEMENT_BASE_IMAGE", "palpo-local-processes")
	gt.env = setDefault(gt.env, "COMPLEMENT_HOSTNAME_RUNNING_COMPLEMENT", "127.0.0.1")
	stopSignals := gt.forwardSignals()
	defer stopSignals()

	if err := gt.run(args); err != nil {
		return 0, err
	}
	// A panic (often a Complement test calling t.Fatal from a goroutine
	// after Palpo failed it) or a timeout ends the whole test binary. Run
	// the package's tests that did not start yet, so one crash does not
	// hide the rest of the package.
	if !o.noRerun && !strings.Contains(o.skipRE, "/") {
		for round := 0; round < 5 && !gt.interrupted.Load(); round++ {
			again := false
			for _, pn := range rs.sortedPackages() {
				p := rs.pkgs[pn]
				if p.Status != "panic" && p.Status != "timeout" {
					continue
				}
				left := o.budget - time.Since(started)
				if left > o.timeout {
					left = o.timeout
				}
				if left < time.Minute {
					fmt.Printf("== not rerunning %s: less than a minute of the -budget left\n", pn)
					continue
				}
				started := p.topLevelNames()
				skip := "^(" + strings.Join(started, "|") + ")$"
				if o.skipRE != "" {
					skip += "|" + o.skipRE
				}
				before := len(p.tests)
				fmt.Printf("== rerunning %s without the %d tests that already ran (the package ended with a %s)\n", pn, len(started), p.Status)
				rerun := append(append([]string(nil), base...), "-timeout", left.Round(time.Second).String(), "-skip", skip, "./"+pn)
				if err := gt.run(rerun); err != nil {
					return 0, err
				}
				if len(p.tests) > before {
					again = true
				}
			}
			if !again {
				break
			}
		}
	}
	rs.finish()
	if len(rs.pkgs) == 0 {
		return 0, fmt.Errorf("go test produced no results; see %s", stderrFile.Name())
	}

	// Summary.
	passing, err := readPassing(o.passingPath)
	if err != nil {
		return 0, err
	}
	_, statErr := os.Stat(o.passingPath)
	regs := passing.regressions(rs, o.runRE == "" && o.skipRE == "")
	info := runInfo{
		Started:          started,
		Wall:             time.Since(started),
		ComplementSource: source,
		Packages:         pkgs,
		GoTestArgs:       args[1:],
		OutDir:           o.out,
	}
	sf, err := os.Create(filepath.Join(o.out, "summary.txt"))
	if err != nil {
		return 0, err
	}
	writeSummary(sf, info, rs, regs, statErr == nil)
	sf.Close()
	ff, err := os.Create(filepath.Join(o.out, "failing.txt"))
	if err != nil {
		return 0, err
	}
	writeFailing(ff, rs)
	ff.Close()
	fmt.Println()
	writeSummary(os.Stdout, info, rs, regs, statErr == nil)

	if o.updatePassing {
		passing.update(rs, o.runRE == "" && o.skipRE == "")
		if err := passing.write(o.passingPath); err != nil {
			return 0, err
		}
		fmt.Printf("\nupdated %s (%d tests)\n", o.passingPath, len(passing))
	}
	for _, p := range rs.pkgs {
		if p.Status == "build failed" {
			return 1, nil
		}
	}
	if len(regs) > 0 && !o.updatePassing {
		return 1, nil
	}
	return 0, nil
}

// goTester runs `go test -json` in the Complement copy and feeds its
// output to one results set.
type goTester struct {
	dir         string
	env         []string
	stderr      io.Writer
	raw         io.Writer
	text        func(pkg string) io.Writer
	rs          *results
	mu          sync.Mutex
	cmd         *exec.Cmd
	interrupted atomic.Bool
}

func (g *goTester) run(args []string) error {
	fmt.Printf("go %s\n", strings.Join(args, " "))
	cmd := exec.Command("go", args...)
	cmd.Dir, cmd.Env, cmd.Stderr = g.dir, g.env, g.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	g.mu.Lock()
	if g.interrupted.Load() {
		g.mu.Unlock()
		return nil
	}
	if err := cmd.Start(); err != nil {
		g.mu.Unlock()
		return err
	}
	g.cmd = cmd
	g.mu.Unlock()
	if err := g.rs.read(stdout, g.raw, g.text); err != nil {
		fmt.Fprintf(os.Stderr, "runner: reading go test output: %v\n", err)
		io.Copy(io.Discard, stdout)
	}
	// go test exits non-zero whenever a test fails; the results say why.
	_ = cmd.Wait()
	g.mu.Lock()
	g.cmd = nil
	g.mu.Unlock()
	return nil
}

// forwardSignals keeps the runner alive on Ctrl-C so that it can write the
// summary of what finished; go test and the test binaries get the signal
// too (same process group) and stop.
func (g *goTester) forwardSignals() (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		for s := range sigs {
			fmt.Fprintf(os.Stderr, "runner: %v: stopping go test, the summary will cover what finished\n", s)
			g.interrupted.Store(true)
			g.mu.Lock()
			if g.cmd != nil && g.cmd.Process != nil {
				g.cmd.Process.Signal(s)
			}
			g.mu.Unlock()
		}
	}()
	return func() { signal.Stop(sigs); close(sigs) }
}

// outputFiles writes each package's test output to its own file,
// output/<package with / as _>.txt, and to stdout with -v.
type outputFiles struct {
	dir     string
	verbose bool
	files   map[string]*os.File
	bufs    map[string]*bufio.Writer
}

func (o *outputFiles) writer(pkg string) io.Writer {
	if o.bufs == nil {
		o.files, o.bufs = map[string]*os.File{}, map[string]*bufio.Writer{}
		os.MkdirAll(o.dir, 0o755)
	}
	b := o.bufs[pkg]
	if b == nil {
		name := strings.ReplaceAll(pkg, "/", "_")
		if name == "" {
			name = "go-test"
		}
		f, err := os.Create(filepath.Join(o.dir, name+".txt"))
		if err != nil {
			fmt.Fprintf(os.Stderr, "runner: %v\n", err)
			return io.Discard
		}
		o.files[pkg], b = f, bufio.NewWriter(f)
		o.bufs[pkg] = b
	}
	if o.verbose {
		return io.MultiWriter(b, os.Stdout)
	}
	return b
}

func (o *outputFiles) close() {
	for pkg, b := range o.bufs {
		b.Flush()
		o.files[pkg].Close()
	}
}

func setDefault(env []string, key, value string) []string {
	for _, kv := range env {
		if strings.HasPrefix(kv, key+"=") && len(kv) > len(key)+1 {
			return env
		}
	}
	return append(env, key+"="+value)
}

// normalisePackages turns csapi, tests/csapi and ./tests/csapi into
// ./tests/csapi; no argument means ./tests/....
func normalisePackages(args []string) []string {
	if len(args) == 0 {
		return []string{"./tests/..."}
	}
	out := make([]string, 0, len(args))
	for _, a := range args {
		a = strings.TrimPrefix(strings.TrimPrefix(a, complementModule+"/"), "./")
		if a != "tests" && !strings.HasPrefix(a, "tests/") {
			a = "tests/" + a
		}
		out = append(out, "./"+a)
	}
	return out
}

// findRepoRoot walks up from the working directory to palpo's go.mod.
func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), "module github.com/palpo-go/palpo\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("not inside the palpo repository (no go.mod of github.com/palpo-go/palpo above the working directory)")
		}
		dir = parent
	}
}
