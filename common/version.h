#pragma once
/* The version every binary prints for --version: meson's project version,
 * and `git describe` of the source tree when it was built from a clone
 * ("0.1.0 (git 4eb8cd7-dirty)"); a build from a tarball has no git part. */

/* Static string. */
const char *ps_version(void);
