# The workload of `make demo`, run by busybox sh under nsinit:
#   level 0: this shell (it ends as `sleep`), a plain child, a zombie that
#            exited 3, a second session with a member;
#   level 1: a pid namespace whose PID 1 is an nsinit agent, with a zombie
#            that exited 200 and a child namespace of its own;
#   level 2: a pid namespace with its nsinit, a new session and a sleeper.
# $NSINIT is the nsinit binary; the script never waits for its children,
# so the zombies stay zombies.
bb=busybox
$bb sleep 1001 &
(exit 3) &
$bb setsid $bb sh -c "$bb sleep 1002 & exec $bb sleep 1003" &
$bb unshare -p -f "$NSINIT" -- $bb sh -c "
	$bb sleep 1011 &
	(exit 200) &
	$bb unshare -p -f '$NSINIT' -- $bb sh -c '$bb sleep 1021 & $bb setsid $bb sleep 1022 & exec $bb sleep 1023' &
	exec $bb sleep 1012" &
exec $bb sleep 1000
