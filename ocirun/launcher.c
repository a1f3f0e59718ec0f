/* The `ocirun` executable: starts the Python runtime from a sealed interpreter.
 *
 * Built by `python3 -m ocirun.launcher PATH`, which defines OCIRUN_PYTHON (the
 * interpreter), OCIRUN_LOWERDIR (overlayfs layers: its directory and a filler),
 * OCIRUN_EXE_NAME (its file name there), OCIRUN_BOOT (the Python code to run) and
 * OCIRUN_BIND_NOW (the LD_BIND_NOW value the boot code recognises as ours).
 *
 * Why C: for create/run/exec the interpreter must be executed from a file that
 * cannot be written (see ocirun/exeseal.py, SECURITY.md), and only the program that
 * executes it can choose which file that is.  Done from Python it would cost a second
 * interpreter start (~6 ms); here it is one detached overlayfs (~0.2 ms).  Anything
 * that fails here falls back to the plain interpreter, and the runtime then seals
 * itself (exeseal.ensure_sealed), so this file is a speed-up, never the protection.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_fsopen
#define SYS_fsopen 430
#define SYS_fsconfig 431
#define SYS_fsmount 432
#endif
#ifndef SYS_execveat
#error "execveat is needed"
#endif
#define FSOPEN_CLOEXEC_ 0x1
#define FSCONFIG_SET_STRING_ 1
#define FSCONFIG_CMD_CREATE_ 6
#define FSMOUNT_CLOEXEC_ 0x1
#define MOUNT_ATTR_RDONLY_ 0x1
#define MOUNT_ATTR_NOSUID_ 0x2
#define MOUNT_ATTR_NODEV_ 0x4

extern char **environ;

/* O_PATH fd of the interpreter seen through a read-only overlayfs that is attached
 * nowhere, or -1. */
static int sealed_interpreter(void)
{
	int ctx, mnt = -1, exe;

	ctx = syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC_);
	if (ctx < 0)
		return -1;
	if (syscall(SYS_fsconfig, ctx, FSCONFIG_SET_STRING_, "lowerdir", OCIRUN_LOWERDIR, 0) == 0 &&
	    syscall(SYS_fsconfig, ctx, FSCONFIG_CMD_CREATE_, NULL, NULL, 0) == 0)
		mnt = syscall(SYS_fsmount, ctx, FSMOUNT_CLOEXEC_,
			      MOUNT_ATTR_RDONLY_ | MOUNT_ATTR_NOSUID_ | MOUNT_ATTR_NODEV_);
	close(ctx);
	if (mnt < 0)
		return -1;
	exe = openat(mnt, OCIRUN_EXE_NAME, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	close(mnt);
	return exe;
}

static int enters_containers(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "create") || !strcmp(argv[i], "run") || !strcmp(argv[i], "exec"))
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	char **args = calloc(argc + 4, sizeof(char *));
	int n = 0, exe;

	if (!args)
		return 127;
	/* Every symbol of a shared libpython bound at load (pyenv's and other
	 * --enable-shared builds; a static one has few to bind): bound lazily, each first
	 * call of one of its own functions goes through the dynamic linker, ~1.4 ms of a
	 * `run` there.  The boot code takes it out of the environment again, so that
	 * nothing the runtime starts (hooks) inherits it; a caller's own value stays. */
	if (!getenv("LD_BIND_NOW"))
		setenv("LD_BIND_NOW", OCIRUN_BIND_NOW, 0);
	args[n++] = OCIRUN_PYTHON;
	args[n++] = "-IS";
	args[n++] = "-c";
	args[n++] = OCIRUN_BOOT;
	for (int i = 1; i < argc; i++)
		args[n++] = argv[i];
	args[n] = NULL;
	if (enters_containers(argc, argv)) {
		exe = sealed_interpreter();
		if (exe >= 0) {
			syscall(SYS_execveat, exe, "", args, environ, AT_EMPTY_PATH);
			close(exe);
		}
	}
	execv(OCIRUN_PYTHON, args);
	fprintf(stderr, "ocirun: executing %s: %s\n", OCIRUN_PYTHON, strerror(errno));
	return 127;
}
