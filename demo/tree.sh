# The workload of `make demo`, run by busybox sh under nsinit:
#   level 0: this shell (it ends as `sleep`), a plain child, a shell waiting
#            for its child, a zombie that exited 3, a second session with
#            a member;
#   level 1: a pid namespace whose PID 1 is an nsinit agent, with a zombie
#            that exited 200 and a child namespace of its own;
#   level 2: a pid namespace with its nsinit, a new session and a sleeper.
# $NSINIT is the nsinit binary; the script never waits for its children,
# so the zombies stay zombies.
#
# Restore's exec payload runs each recorded program again from its start;
# a task waiting for its children (the shell at `wait` below) is made to
# wait again instead (docs/restore.md, "Waiters"). `unshare -p` without -f
# puts the shell's next child in a new namespace as its PID 1, and the
# shell then becomes a sleep.
bb=busybox
$bb sleep 1001 &
$bb sh -c "$bb sleep 1004 & wait" &
(exit 3) &
$bb setsid $bb sh -c "$bb sleep 1002 & exec $bb sleep 1003" &
$bb unshare -p $bb sh -c "
	'$NSINIT' -- $bb sh -c \"
		$bb sleep 1011 &
		(exit 200) &
		$bb unshare -p $bb sh -c '\\\"$NSINIT\\\" -- $bb sh -c \\\"$bb sleep 1021 & $bb setsid $bb sleep 1022 & exec $bb sleep 1023\\\" & exec $bb sleep 1013' &
		exec $bb sleep 1012\" &
	exec $bb sleep 1010" &
exec $bb sleep 1000
