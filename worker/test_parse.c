#include <criterion/criterion.h>

#include "parse.h"
