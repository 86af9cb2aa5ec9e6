package restorer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// rtnl is a minimal rtnetlink client over golang.org/x/sys/unix: the few
// requests restoring a net namespace needs (create a veth pair, set a link
// up, add an address, add a route), each acknowledged. The socket is
// created inside the net namespace it configures and stays bound to it.
type rtnl struct {
	fd  int
	seq uint32
}

// vethInfoPeer is VETH_INFO_PEER (linux/veth.h), missing from x/sys/unix.
const vethInfoPeer = 1

// rtnlIn opens an rtnetlink socket inside the net namespace nsPath
// (/proc/PID/ns/net), from a goroutine on a locked thread that joins the
// namespace and comes back. A thread that cannot come back stays locked
// when its goroutine ends, so the runtime retires it.
func rtnlIn(nsPath string) (*rtnl, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		fd, err, back := socketIn(nsPath)
		if back {
			runtime.UnlockOSThread()
		}
		ch <- result{fd, err}
	}()
	res := <-ch
	if res.err != nil {
		return nil, res.err
	}
	if err := unix.Bind(res.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(res.fd)
		return nil, err
	}
	return &rtnl{fd: res.fd}, nil
}

// socketIn runs on a locked thread; back says the thread is in its own
// net namespace again.
func socketIn(nsPath string) (fd int, err error, back bool) {
	target, err := os.Open(nsPath)
	if err != nil {
		return -1, err, true
	}
	defer target.Close()
	own, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return -1, err, true
	}
	defer own.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return -1, fmt.Errorf("setns %s: %w", nsPath, err), true
	}
	fd, serr := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
		if serr == nil {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("back to the restorer's net namespace: %w", err), false
	}
	if serr != nil {
		return -1, fmt.Errorf("netlink socket in %s: %w", nsPath, serr), true
	}
	return fd, nil, true
}

func (r *rtnl) close() { unix.Close(r.fd) }

// msg builds one netlink message: a fixed header, then attributes.
type msg struct{ b []byte }

func newMsg(typ, flags uint16, fixed []byte) *msg {
	m := &msg{b: make([]byte, unix.NLMSG_HDRLEN, 256)}
	binary.NativeEndian.PutUint16(m.b[4:], typ)
	binary.NativeEndian.PutUint16(m.b[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	m.b = append(m.b, fixed...)
	return m
}

func (m *msg) pad() {
	for len(m.b)%4 != 0 {
		m.b = append(m.b, 0)
	}
}

// attr appends a flat attribute.
func (m *msg) attr(typ uint16, data []byte) {
	m.pad()
	var h [4]byte
	binary.NativeEndian.PutUint16(h[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(h[2:], typ)
	m.b = append(append(m.b, h[:]...), data...)
}

func (m *msg) str(typ uint16, s string) { m.attr(typ, append([]byte(s), 0)) }

func (m *msg) u32(typ uint16, v uint32) {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	m.attr(typ, b[:])
}

// nest opens a nested attribute; the returned func closes it.
func (m *msg) nest(typ uint16) func() {
	m.pad()
	start := len(m.b)
	m.attr(typ|unix.NLA_F_NESTED, nil)
	return func() {
		m.pad()
		binary.NativeEndian.PutUint16(m.b[start:], uint16(len(m.b)-start))
	}
}

// do sends m and waits for its acknowledgement; reply, when set, gets the
// payload of a non-error answer (RTM_GETLINK).
func (r *rtnl) do(m *msg, reply func([]byte)) error {
	m.pad()
	r.seq++
	binary.NativeEndian.PutUint32(m.b[0:], uint32(len(m.b)))
	binary.NativeEndian.PutUint32(m.b[8:], r.seq)
	if err := unix.Sendto(r.fd, m.b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(r.fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, a := range msgs {
			if a.Header.Seq != r.seq {
				continue
			}
			if a.Header.Type == unix.NLMSG_ERROR {
				if len(a.Data) < 4 {
					return errors.New("short netlink error")
				}
				if e := int32(binary.NativeEndian.Uint32(a.Data)); e != 0 {
					return unix.Errno(-e)
				}
				return nil
			}
			if reply != nil {
				reply(a.Data)
			}
		}
	}
}

func ifinfo(index int32, flags, change uint32) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(b[4:], uint32(index))
	binary.NativeEndian.PutUint32(b[8:], flags)
	binary.NativeEndian.PutUint32(b[12:], change)
	return b
}

// linkIndex is the ifindex of interface name.
func (r *rtnl) linkIndex(name string) (int32, error) {
	m := newMsg(unix.RTM_GETLINK, 0, ifinfo(0, 0, 0))
	m.str(unix.IFLA_IFNAME, name)
	idx := int32(0)
	err := r.do(m, func(d []byte) {
		if len(d) >= unix.SizeofIfInfomsg {
			idx = int32(binary.NativeEndian.Uint32(d[4:]))
		}
	})
	if err == nil && idx == 0 {
		err = errors.New("no index in the answer")
	}
	if err != nil {
		return 0, fmt.Errorf("interface %q: %w", name, err)
	}
	return idx, nil
}
