package supervise

import (
	"errors"
	"os"
	"syscall"
)

var (
	// errNotFound is os/exec's ErrNotFound, said the same way.
	errNotFound = errors.New("executable file not found in $PATH")
	// errDot is os/exec's ErrDot: the command was found only through a
	// relative PATH entry (".", "" or "bin"), which os/exec refuses too.
	errDot = errors.New("cannot run executable found relative to current directory")
)

// lookPath finds the command as os/exec.LookPath does (a name with a slash
// is taken as it is; else the first executable regular file in a PATH
// directory; an empty entry is "."), without importing os/exec: its
// dependencies (strings, path/filepath, context) would move the early init
// after the heavy packages' initialisers (see the package comment).
func lookPath(file string) (string, error) {
	for i := 0; i < len(file); i++ {
		if file[i] == '/' {
			if err := findExecutable(file); err != nil {
				return "", &os.PathError{Op: "exec", Path: file, Err: err}
			}
			return file, nil
		}
	}
	path := os.Getenv("PATH")
	for start := 0; start <= len(path); {
		end := start
		for end < len(path) && path[end] != ':' {
			end++
		}
		dir := path[start:end]
		start = end + 1
		if dir == "" {
			dir = "."
		}
		p := dir + "/" + file
		if findExecutable(p) != nil {
			continue
		}
		if dir[0] != '/' {
			return "", &os.PathError{Op: "exec", Path: p, Err: errDot}
		}
		return p, nil
	}
	return "", &os.PathError{Op: "exec", Path: file, Err: errNotFound}
}

// findExecutable is os/exec's test: a regular file this process may
// execute (with its effective ids).
func findExecutable(file string) error {
	fi, err := os.Stat(file)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return syscall.EISDIR
	}
	err = syscall.Faccessat(atFdcwd, file, 1 /* X_OK */, atEaccess)
	if err == nil || (err != syscall.ENOSYS && err != syscall.EPERM) {
		return err
	}
	if fi.Mode()&0o111 != 0 {
		return nil
	}
	return os.ErrPermission
}

// atFdcwd and atEaccess are AT_FDCWD and AT_EACCESS (linux/fcntl.h).
const (
	atFdcwd   = -100
	atEaccess = 0x200
)
