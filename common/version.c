#include "version.h"

#include "version_git.h"

const char *ps_version(void) {
    /* Both parts are literals: the choice is made at compile time. */
    return sizeof(PS_GIT_DESCRIBE) > 1 ? PS_PROJECT_VERSION " (git " PS_GIT_DESCRIBE ")"
                                       : PS_PROJECT_VERSION;
}
