#define _GNU_SOURCE
#include <stdio.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/sched.h>
#include <string.h>
#include <errno.h>
#include <stdlib.h>
int main(int argc,char**argv){ pid_t want=atoi(argv[1]); int32_t tids[2]={1,want}; /* pid_t: the kernel reads set_tid as pid_t[], not u64[] */ struct clone_args a; memset(&a,0,sizeof a);
 a.flags=CLONE_NEWPID; a.exit_signal=SIGCHLD; a.set_tid=(uint64_t)tids; a.set_tid_size=atoi(argv[2]);
 long r=syscall(435,&a,sizeof a); if(r==0){_exit(0);} printf("r=%ld errno=%s\n",r,strerror(errno)); if(r>0) waitpid(r,0,0); return 0;}
