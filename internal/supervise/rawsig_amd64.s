#include "textflag.h"

// rawSigHandler is the handler for the signals the Go runtime keeps from
// os/signal (see rawsig_amd64.go). It runs on the thread's signal
// stack (SA_ONSTACK), on any thread, at any moment: it only sets the
// signal's bit in rawPending with an atomic OR and writes one byte to
// rawPipe to wake the forwarding goroutine. DI holds the signal number.
TEXT ·rawSigHandler(SB),NOSPLIT|NOFRAME,$0
	MOVQ	DI, CX
	DECQ	CX
	MOVQ	$1, AX
	SHLQ	CX, AX
	LOCK
	ORQ	AX, ·rawPending(SB)
	MOVQ	$1, AX			// SYS_write(rawPipe, &rawByte, 1)
	MOVQ	·rawPipe(SB), DI
	LEAQ	·rawByte(SB), SI
	MOVQ	$1, DX
	SYSCALL
	RET

// rawSigReturn is the sa_restorer of rawSigHandler: rt_sigreturn.
TEXT ·rawSigReturn(SB),NOSPLIT|NOFRAME,$0
	MOVQ	$15, AX
	SYSCALL
	INT	$3

// func rawHandlerAddrs() (handler, restorer uintptr)
// The entry addresses of the two functions above. A Go func value of an
// assembly function points to an ABI wrapper, which the kernel must not
// jump to.
TEXT ·rawHandlerAddrs(SB),NOSPLIT,$0-16
	LEAQ	·rawSigHandler(SB), AX
	MOVQ	AX, handler+0(FP)
	LEAQ	·rawSigReturn(SB), AX
	MOVQ	AX, restorer+8(FP)
	RET
