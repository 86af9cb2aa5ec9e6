#!/bin/sh
# Runs tini's own test suite (krallin/tini, test/run_inner_tests.py) with
# nsinit in tini's place. tini's code is not part of this repository and
# CI has no network: fetch a checkout yourself and pass its path.
#
#   scripts/tini-suite.sh /path/to/tini-checkout [bin/nsinit]
#
# Needs python3-psutil and python3-prctl (Debian) and a C compiler for the
# suite's sigconf-test helper. Exits with the suite's status.
#
# nsinit differs from tini on purpose in one test, which is therefore left
# out: the "zombie reaping failure test" expects a warning when the init is
# neither PID 1 nor a child subreaper; nsinit makes itself a subreaper then
# (README, "Reaping"), so there is nothing to warn about.
set -eu
src=$(cd "$1" && pwd)
nsinit=$(cd "$(dirname "${2:-bin/nsinit}")" && pwd)/$(basename "${2:-bin/nsinit}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp "$nsinit" "$work/tini"
cc -o "$work/sigconf-test" "$src/test/sigconf/sigconf-test.c"

# The suite reads signal sets with the PyPI "bitmap" module, which Debian
# does not package; it uses only BitMap.fromstring and nonzero().
cat >"$work/bitmap.py" <<'PY'
class BitMap:
    """A string of bits, most significant first (bit 0 is the last)."""
    def __init__(self, bits):
        self.bits = bits
    @classmethod
    def fromstring(cls, s):
        return cls(s)
    def nonzero(self):
        n = len(self.bits)
        return [n - 1 - i for i, c in enumerate(self.bits) if c == "1"]
PY

# The suite without its zombie reaping failure test (see above).
/usr/bin/python3 - "$src/test/run_inner_tests.py" "$work/suite.py" <<'PY'
import sys
s = open(sys.argv[1]).read()
a = s.index('    print("Running zombie reaping failure test')
b = s.index('    # Test that the signals are properly in place here.')
open(sys.argv[2], "w").write(s[:a] + s[b:])
PY

# The suite's helper scripts run "#!/usr/bin/env python3": Debian's, which
# has psutil and prctl.
cd "$work"
PATH=/usr/bin:$PATH PYTHONPATH=$work SOURCE_DIR=$src BUILD_DIR=$work FORCE_SUBREAPER=1 \
	/usr/bin/python3 "$work/suite.py"
