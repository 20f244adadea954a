package media

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Storage keeps media content, addressed by the hex SHA-256 of its bytes:
// the same bytes are stored once whoever uploads them. The local
// filesystem implements it; an S3-compatible backend can too (staging in a
// local temporary file, committing by uploading it).
type Storage interface {
	// Stage returns a new, empty temporary file to write content into
	// before its hash is known.
	Stage() (*os.File, error)
	// Commit makes the fully written staged file f the content of hash and
	// closes it. When Commit returns nil the content survives a crash; if
	// content with that hash exists already, f is discarded.
	Commit(f *os.File, hash string) error
	// Discard closes and removes a staged file that will not be committed.
	Discard(f *os.File)
	// Open opens the content of hash; a missing content is an error
	// satisfying errors.Is(err, os.ErrNotExist).
	Open(hash string) (Content, error)
	// Delete removes the content of hash. Removing a missing content is not
	// an error.
	Delete(hash string) error
	// CleanStaged removes staged files older than before: the leftovers of
	// uploads interrupted by a crash.
	CleanStaged(before time.Time) error
}

// Content is stored content opened for reading.
type Content interface {
	io.ReadSeekCloser
	// Size is the content's length in bytes.
	Size() int64
}

// FileStorage is Storage on the local filesystem: content lives in
// root/content/ab/cd/abcd…, staged files in root/tmp. Commit writes
// atomically: the staged file is synced, renamed into place (same
// filesystem) and the directory synced, so a crash leaves either no file or
// the whole file, never a half one.
type FileStorage struct {
	root string
}

// NewFileStorage returns the storage under root, creating its directories.
func NewFileStorage(root string) (*FileStorage, error) {
	for _, d := range []string{"content", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, fmt.Errorf("media storage: %w", err)
		}
	}
	return &FileStorage{root: root}, nil
}

// path is where the content of hash lives; hash must be valid.
func (s *FileStorage) path(hash string) string {
	return filepath.Join(s.root, "content", hash[:2], hash[2:4], hash)
}

// validHash reports whether hash is 64 lower-case hex digits, the only
// names that reach the filesystem.
func validHash(hash string) bool {
	return len(hash) == 64 && strings.Trim(hash, "0123456789abcdef") == ""
}

// Stage creates a temporary file in root/tmp.
func (s *FileStorage) Stage() (*os.File, error) {
	return os.CreateTemp(filepath.Join(s.root, "tmp"), "upload-*")
}

// Discard removes a staged file.
func (s *FileStorage) Discard(f *os.File) {
	f.Close()
	os.Remove(f.Name())
}

// Commit syncs f and renames it to the content path of hash.
func (s *FileStorage) Commit(f *os.File, hash string) error {
	if !validHash(hash) {
		s.Discard(f)
		return fmt.Errorf("media storage: invalid hash %q", hash)
	}
	if err := f.Sync(); err != nil {
		s.Discard(f)
		return fmt.Errorf("media storage: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("media storage: %w", err)
	}
	dst := s.path(hash)
	if _, err := os.Stat(dst); err == nil {
		os.Remove(f.Name()) // the same bytes are stored already
		return nil
	}
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("media storage: %w", err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("media storage: %w", err)
	}
	return syncDir(dir)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("media storage: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("media storage: syncing %s: %w", dir, err)
	}
	return nil
}

// fileContent is an open content file.
type fileContent struct {
	*os.File
	size int64
}

func (c fileContent) Size() int64 { return c.size }

// Open opens the content of hash.
func (s *FileStorage) Open(hash string) (Content, error) {
	if !validHash(hash) {
		return nil, fmt.Errorf("media storage: invalid hash %q: %w", hash, os.ErrNotExist)
	}
	f, err := os.Open(s.path(hash))
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return fileContent{File: f, size: st.Size()}, nil
}

// Delete removes the content of hash.
func (s *FileStorage) Delete(hash string) error {
	if !validHash(hash) {
		return nil
	}
	if err := os.Remove(s.path(hash)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("media storage: %w", err)
	}
	return nil
}

// CleanStaged removes staged files last written before before.
func (s *FileStorage) CleanStaged(before time.Time) error {
	dir := filepath.Join(s.root, "tmp")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("media storage: %w", err)
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.ModTime().Before(before) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	return nil
}
