#include <criterion/criterion.h>

#include "metrics.h"
