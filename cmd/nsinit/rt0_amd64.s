#include "textflag.h"

// rt0 is nsinit's ELF entry point on amd64 (the Makefile links with
// -E main.rt0). Before the Go runtime installs its own signal handlers, it
// records which signals nsinit was started with ignored (SIG_IGN) and its
// signal mask, so the command can be started with the same, as tini does. It uses no
// stack and touches only registers the kernel's entry state does not need,
// then jumps to the runtime's normal entry with the stack untouched.
//
// Reads rt_sigaction(sig, NULL, &origSigAction, 8) for sig 1..64 and sets
// bit sig-1 of origSigIgn when the handler is SIG_IGN (1), then the blocked
// mask into origSigMask.
TEXT ·rt0(SB),NOSPLIT|NOFRAME,$0
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
