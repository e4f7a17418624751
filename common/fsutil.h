#pragma once
/* Small file-system helpers shared by the daemons, tools and tests. */

/* mkdir -p: 0 or -errno. */
int ps_mkdir_p(const char *path);
/* rm -rf (does not follow symlinks): 0 or -errno of the first failure. */
int ps_rm_tree(const char *path);
/* Copy a regular file to a new path (which must not exist), fsynced. */
int ps_copy_file(const char *from, const char *to);
