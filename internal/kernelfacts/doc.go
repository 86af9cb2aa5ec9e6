// Package kernelfacts holds the tests that prove docs/kernel.md on the
// running kernel: each kernel behaviour nsinit relies on (F1.1, F2.3, ...)
// is checked by a test here, or by the test docs/kernel.md names elsewhere.
//
// The tests create real pid namespaces and processes. A child that must run
// Go code is this test binary re-executed as a helper (see TestMain), started
// by a raw fork-style clone3 so that set_tid, CLONE_PARENT and CLONE_NEWPID
// can be chosen; the tests wait on events (pidfds, pipes), never on time, and
// leave no process behind. Tests that need root skip with the reason.
package kernelfacts
