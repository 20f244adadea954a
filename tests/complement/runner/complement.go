package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// defaultMirror is where the development machines keep a bare clone of
// Complement; used when neither COMPLEMENT_DIR nor COMPLEMENT_GIT_DIR is set.
const defaultMirror = "/work/.mirror/matrix-org+complement/repo"

const complementModule = "github.com/matrix-org/complement"

// prepareComplement puts a copy of Complement into dst and returns a line
// describing where it came from.
func prepareComplement(dir, gitDir, dst string) (string, error) {
	if dir == "" && gitDir == "" {
		if _, err := os.Stat(defaultMirror); err == nil {
			gitDir = defaultMirror
		} else {
			return "", errors.New("no Complement checkout: set COMPLEMENT_DIR to a checkout of matrix-org/complement (see tests/complement/README.md)")
		}
	}
	if dir != "" {
		if err := copyTree(dir, dst); err != nil {
			return "", fmt.Errorf("copying %s: %w", dir, err)
		}
		desc := dir
		if rev, err := exec.Command("git", "-C", dir, "rev-parse", "--short", "HEAD").Output(); err == nil {
			desc += " @ " + strings.TrimSpace(string(rev))
		}
		return desc, nil
	}
	rev, err := exec.Command("git", "--git-dir", gitDir, "rev-parse", "HEAD").Output()
	if err != nil {
		return "", fmt.Errorf("git --git-dir %s rev-parse HEAD: %w", gitDir, err)
	}
	cmd := exec.Command("git", "--git-dir", gitDir, "archive", "--format=tar", "HEAD")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	if err := untar(out, dst); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return "", err
	}
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("git archive: %w: %s", err, stderr.String())
	}
	return fmt.Sprintf("%s @ %s", gitDir, strings.TrimSpace(string(rev))[:12]), nil
}

func untar(r io.Reader, dst string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(h.Name)
		if name == "." || strings.HasPrefix(name, "..") || filepath.IsAbs(name) {
			continue
		}
		p := filepath.Join(dst, name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fs.FileMode(h.Mode)&0o777|0o600)
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, tr); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
		case tar.TypeSymlink:
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		}
	}
}

// copyTree copies a directory, leaving out .git.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case d.Type().IsRegular():
			return copyRegular(p, target)
		}
		return nil
	})
}

func copyRegular(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, info.Mode().Perm()|0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// installDeployer copies the deployer's Go files into the Complement tree as
// the package github.com/matrix-org/complement/palpodeploy.
func installDeployer(deployerDir, complementDir string) error {
	dst := filepath.Join(complementDir, "palpodeploy")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(deployerDir, "*.go"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no Go files in %s", deployerDir)
	}
	for _, f := range files {
		if err := copyRegular(f, filepath.Join(dst, filepath.Base(f))); err != nil {
			return err
		}
	}
	return nil
}

var (
	testMainRE        = regexp.MustCompile(`complement\.TestMain\(\s*m\s*,\s*("[^"]*")\s*\)`)
	complementImport  = regexp.MustCompile(`(?m)^(\s*)"github\.com/matrix-org/complement"\s*$`)
	oldDeployHelperRE = regexp.MustCompile(`(func OldDeploy\(t ct\.TestLike, blueprint b\.Blueprint\) Deployment \{\n\s*t\.Helper\(\))`)
)

// patchTestMains points every test package's TestMain at the deployer and
// returns how many files it changed.
func patchTestMains(complementDir string) (int, error) {
	n := 0
	err := filepath.WalkDir(filepath.Join(complementDir, "tests"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, "_test.go") {
			return err
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if !testMainRE.Match(src) {
			return nil
		}
		if !complementImport.Match(src) {
			return fmt.Errorf("%s calls complement.TestMain but its import of %s was not recognised", p, complementModule)
		}
		out := testMainRE.ReplaceAll(src, []byte(`complement.TestMain(m, $1, complement.WithDeployment(palpodeploy.Deploy), complement.WithCleanup(palpodeploy.Cleanup))`))
		loc := complementImport.FindSubmatchIndex(out)
		indent := string(out[loc[2]:loc[3]])
		insert := "\n" + indent + `palpodeploy "` + complementModule + `/palpodeploy"`
		out = append(out[:loc[1]:loc[1]], append([]byte(insert), out[loc[1]:]...)...)
		if err := os.WriteFile(p, out, 0o644); err != nil {
			return err
		}
		n++
		return nil
	})
	return n, err
}

// oldDeployHook lets the few tests that still call complement.OldDeploy
// with a blueprint run too: blueprints with nothing but empty homeservers
// hs1…hsN become a Deploy(t, N); blueprints that need users, rooms or
// application services created inside Docker images are skipped with a
// "palpo harness" reason.
const oldDeployHook = `package complement

// Written by Palpo's Complement runner (tests/complement/runner); not part of Complement.

import (
	"fmt"

	"github.com/matrix-org/complement/b"
	"github.com/matrix-org/complement/ct"
)

func palpoOldDeploy(t ct.TestLike, blueprint b.Blueprint) (Deployment, bool) {
	t.Helper()
	if customDeployer == nil || testPackage == nil {
		return nil, false
	}
	for i, hs := range blueprint.Homeservers {
		if hs.Name != fmt.Sprintf("hs%d", i+1) || len(hs.Users) > 0 || len(hs.Rooms) > 0 || len(hs.ApplicationServices) > 0 {
			t.Skipf("palpo harness: blueprint %q needs Complement's Docker image builder (pre-made users, rooms or application services)", blueprint.Name)
			return nil, true
		}
	}
	return customDeployer(t, len(blueprint.Homeservers), testPackage.Config), true
}
`

// patchOldDeploy installs oldDeployHook; it reports false if Complement's
// OldDeploy no longer looks as expected (the tests using it then fail
// trying to reach Docker, which the summary makes obvious).
func patchOldDeploy(complementDir string) (bool, error) {
	p := filepath.Join(complementDir, "test_main.go")
	src, err := os.ReadFile(p)
	if err != nil {
		return false, err
	}
	if !oldDeployHelperRE.Match(src) {
		return false, nil
	}
	out := oldDeployHelperRE.ReplaceAll(src, []byte("$1\n\tif d, ok := palpoOldDeploy(t, blueprint); ok {\n\t\treturn d\n\t}"))
	if err := os.WriteFile(p, out, 0o644); err != nil {
		return false, err
	}
	return true, os.WriteFile(filepath.Join(complementDir, "palpo_olddeploy.go"), []byte(oldDeployHook), 0o644)
}
