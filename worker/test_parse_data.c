#include "testutil.h"
#include "parse.h"

PS_TEST_MAIN_REQUIRES_DATA()
