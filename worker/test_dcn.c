#include <criterion/criterion.h>

#include "dcn.h"
