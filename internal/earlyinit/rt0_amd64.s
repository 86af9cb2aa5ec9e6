#include "textflag.h"

// rt0 is nsinit's ELF entry point on amd64 (the Makefile links with
// -E github.com/nsinit/nsinit/internal/earlyinit.rt0). Before the Go runtime installs its own signal handlers, it
// records which signals nsinit was started with ignored (SIG_IGN) and its
// signal mask, so the command can be started with the same, as tini does. It uses no
// stack and touches only registers the kernel's entry state does not need,
// then jumps to the runtime's normal entry with the stack untouched.
//
// Reads rt_sigaction(sig, NULL, &origSigAction, 8) for sig 1..64 and sets
// bit sig-1 of origSigIgn when the handler is SIG_IGN (1), then the blocked
// mask into origSigMask.
//
// First, a restored task that was waiting for its children (internal/waiter)
// is told by its mark: pread64(waiterFD, &waiterBuf, 8, 0) gives the magic.
// It then never reaches the runtime (waitChildren).
TEXT ·rt0(SB),NOSPLIT|NOFRAME,$0
	MOVQ	$17, AX			// SYS_pread64
	MOVQ	·waiterFD(SB), DI
	LEAQ	·waiterBuf(SB), SI
	MOVQ	$8, DX
	MOVQ	$0, R10
	SYSCALL
	CMPQ	AX, $8
	JNE	signals
	MOVQ	·waiterBuf(SB), AX
	CMPQ	AX, ·waiterMagic(SB)
	JNE	signals
	JMP	·waitChildren(SB)
signals:
	MOVQ	$1, R12
loop:
	MOVQ	$13, AX			// SYS_rt_sigaction
	MOVQ	R12, DI
	MOVQ	$0, SI
	LEAQ	·origSigAction(SB), DX
	MOVQ	$8, R10
	SYSCALL
	CMPQ	AX, $0
	JNE	next
	MOVQ	·origSigAction(SB), AX
	CMPQ	AX, $1			// SIG_IGN
	JNE	next
	MOVQ	R12, CX
	DECQ	CX
	MOVQ	$1, AX
	SHLQ	CX, AX
	ORQ	AX, ·origSigIgn(SB)
next:
	INCQ	R12
	CMPQ	R12, $65
	JLT	loop
	MOVQ	$14, AX			// SYS_rt_sigprocmask(SIG_BLOCK, NULL, &origSigMask, 8)
	MOVQ	$0, DI
	MOVQ	$0, SI
	LEAQ	·origSigMask(SB), DX
	MOVQ	$8, R10
	SYSCALL
	MOVQ	$1, ·origSigKnown(SB)
	JMP	_rt0_amd64_linux(SB)

// waitChildren is internal/waiter.Run without the Go runtime: close the
// mark, wait4(-1, &waiterStatus, __WALL, NULL) until it fails (ECHILD:
// no child left), again on EINTR, then exit_group with the last child's
// status as a shell reports it (code, or 128+signal).
TEXT ·waitChildren(SB),NOSPLIT|NOFRAME,$0
	MOVQ	$3, AX			// SYS_close
	MOVQ	·waiterFD(SB), DI
	SYSCALL
	MOVQ	$0, R12			// the exit code so far
wait:
	MOVQ	$61, AX			// SYS_wait4
	MOVQ	$-1, DI
	LEAQ	·waiterStatus(SB), SI
	MOVQ	$0x40000000, DX		// __WALL
	MOVQ	$0, R10
	SYSCALL
	CMPQ	AX, $-4			// -EINTR
	JEQ	wait
	CMPQ	AX, $0
	JLE	done
	MOVL	·waiterStatus(SB), AX
	MOVQ	AX, CX
	ANDQ	$0x7f, CX
	JEQ	exited
	ADDQ	$128, CX		// killed by signal CX
	MOVQ	CX, R12
	JMP	wait
exited:
	SHRQ	$8, AX
	ANDQ	$0xff, AX
	MOVQ	AX, R12
	JMP	wait
done:
	MOVQ	R12, DI
	MOVQ	$231, AX		// SYS_exit_group
	SYSCALL
	JMP	done
