package kernelfacts

import "unsafe"

// unsafePtr is the address off bytes into v.
func unsafePtr[T any](v *T, off uintptr) unsafe.Pointer {
	return unsafe.Add(unsafe.Pointer(v), off)
}
