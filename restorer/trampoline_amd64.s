#include "textflag.h"

// func clone3(args uintptr, size uintptr, arg uintptr) (r1 uintptr, errno uintptr)
//
// Like glibc's clone: the parent returns the new pid (or -1 and errno); the
// child, which clone3 started on the stack given in args, calls
// builderMain(arg) (through builderEntry) on that stack and exits if it ever returns. The child
// shares the address space (CLONE_VM), so nothing here may touch the
// caller's Go stack after the syscall.
TEXT ·clone3(SB),NOSPLIT|NOFRAME,$0-40
	MOVQ	args+0(FP), DI
	MOVQ	size+8(FP), SI
	MOVQ	arg+16(FP), R12
	MOVQ	$435, AX // SYS_clone3
	SYSCALL
	CMPQ	AX, $0
	JEQ	child
	CMPQ	AX, $0xfffffffffffff001
	JLS	ok
	NEGQ	AX
	MOVQ	$-1, r1+24(FP)
	MOVQ	AX, errno+32(FP)
	RET
ok:
	MOVQ	AX, r1+24(FP)
	MOVQ	$0, errno+32(FP)
	RET
child:
	// Call builderMain(arg) with the register ABI, through a pointer so
	// the linker's nosplit analysis does not see a cycle: AX = arg, X15 =
	// 0 (ABIInternal's zero register). builderMain never uses g (R14).
	ANDQ	$~15, SP
	SUBQ	$16, SP
	MOVQ	R12, AX
	XORPS	X15, X15
	MOVQ	·builderEntry(SB), R11
	CALL	R11
	MOVQ	$127, DI
	MOVQ	$231, AX // SYS_exit_group
	SYSCALL
	INT	$3
